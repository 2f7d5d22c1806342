"""Network failures said by their cause and host: "dl.example.org: name not found".

requests and urllib3 wrap the cause several layers deep and word it for developers
(``HTTPConnectionPool(host=..., port=80): Max retries exceeded with url: ... (Caused by
NameResolutionError(...))``). ``network_cause`` walks the chain of causes to the one a
user can act on; the library's text goes into the error's details only.
"""

from __future__ import annotations

import errno
import http.client
import socket
import ssl
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from acquired.sources.http.errors import ConnectionFailed, HttpError, Truncated

_ERRNO_CAUSES = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset",
    errno.ECONNABORTED: "connection reset",
    errno.EPIPE: "connection reset",
    errno.ETIMEDOUT: "timed out",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EHOSTDOWN: "host unreachable",
    errno.ENETDOWN: "network unreachable",
}


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything that caused it, outermost first (urllib3 keeps the cause
    in ``reason``, requests in ``args[0]``)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo:
        cur = todo.pop(0)
        if any(cur is s for s in seen):
            continue
        seen.append(cur)
        for nxt in (
            getattr(cur, "reason", None),
            cur.__cause__,
            cur.__context__,
            *(a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)),
        ):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return seen


def network_cause(exc: BaseException) -> tuple[str, str]:
    """(kind, words) for a failed request: kind is one of ``dns``, ``refused``,
    ``timeout``, ``tls``, ``reset``, ``unreachable``, ``closed``, ``other``."""
    chain = _chain(exc)
    for cur in chain:
        if isinstance(cur, socket.gaierror) or type(cur).__name__ == "NameResolutionError":
            return "dns", "name not found"
    for cur in chain:
        if isinstance(cur, ssl.SSLCertVerificationError):
            return "tls", f"TLS certificate not accepted ({cur.verify_message or cur.reason})"
        if isinstance(
            cur, ssl.SSLError | requests.exceptions.SSLError | urllib3.exceptions.SSLError
        ):
            reason = getattr(cur, "reason", None)
            return "tls", f"TLS failed ({reason})" if isinstance(reason, str) else "TLS failed"
    for cur in chain:
        if isinstance(cur, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(cur, ConnectionResetError | BrokenPipeError | ConnectionAbortedError):
            return "reset", "connection reset"
        if isinstance(cur, OSError) and cur.errno in _ERRNO_CAUSES:
            words = _ERRNO_CAUSES[cur.errno]
            kind = {"connection refused": "refused", "connection reset": "reset"}.get(
                words, "timeout" if words == "timed out" else "unreachable"
            )
            return kind, words
    for cur in chain:
        # After the errno causes: urllib3's NewConnectionError is a ConnectTimeoutError.
        if isinstance(cur, TimeoutError | requests.Timeout | urllib3.exceptions.TimeoutError):
            return "timeout", "timed out"
    for cur in chain:
        if isinstance(
            cur,
            http.client.IncompleteRead
            | http.client.RemoteDisconnected
            | requests.exceptions.ChunkedEncodingError
            | urllib3.exceptions.ProtocolError,
        ):
            return "closed", "connection closed mid-transfer"
    return "other", "connection failed"


def network_error(exc: BaseException, url: str) -> HttpError:
    """The engine's error for a failed request to ``url``: a short message naming the
    host (and port, when the URL names one) and the cause, with the library's full
    text in ``details["library"]``."""
    parts = urlsplit(url)
    host = parts.hostname or url
    try:
        port = parts.port
    except ValueError:
        port = None
    where = f"{host}:{port}" if port is not None else host
    kind, words = network_cause(exc)
    library = f"{type(exc).__name__}: {exc}"
    if kind == "closed":
        return Truncated(f"{where}: {words}", url=url, host=host, kind=kind, library=library)
    return ConnectionFailed(f"{where}: {words}", url=url, host=host, kind=kind, library=library)
