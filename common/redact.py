"""Secrets in URLs, hidden wherever a URL is shown or logged.

A mirror may need credentials (``https://alice:S3cret@host/f``) or a signed query
(``?token=...``, ``?X-Amz-Signature=...``). The manifest keeps them as written, because
the daemon needs them to fetch; everything a person or a log reads goes through
:func:`redact_text` (free text), :func:`redact_url` (one URL) or :func:`redact_value`
(a JSON-like reply): userinfo becomes ``***@`` and the value of every query parameter
whose name matches one of the configured patterns becomes ``***``.

The patterns are shell-style and case-insensitive (``X-Amz-*`` matches
``X-Amz-Signature``); :func:`configure` replaces them for the whole process (the daemon
calls it at start-up and on reload with its ``redact_query_params`` setting). A leaf
module: it imports nothing of acquired.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "DEFAULT_QUERY_PARAMS",
    "MASK",
    "configure",
    "query_params",
    "redact_text",
    "redact_url",
    "redact_value",
]

#: Query parameters whose values are hidden unless configured otherwise.
DEFAULT_QUERY_PARAMS: tuple[str, ...] = ("token", "key", "signature", "sig", "X-Amz-*")
MASK = "***"

# scheme://, then everything up to whitespace or a character that ends a URL in prose,
# JSON or a Python repr.
_URL_RE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")
_lock = threading.Lock()
# One slot, replaced whole: readers see the old or the new tuple, never a mix.
_active: list[tuple[str, ...]] = [tuple(p.lower() for p in DEFAULT_QUERY_PARAMS)]


def configure(params: Iterable[str]) -> None:
    """Use ``params`` (shell-style patterns, case-insensitive) from now on, process-wide."""
    with _lock:
        _active[0] = tuple(str(p).lower() for p in params)


def query_params() -> tuple[str, ...]:
    """The patterns in use (lower case)."""
    return _active[0]


def _secret_param(name: str, patterns: tuple[str, ...]) -> bool:
    lower = name.lower()
    return any(fnmatch.fnmatchcase(lower, p) for p in patterns)


def _redact_query(query: str, patterns: tuple[str, ...]) -> str:
    if not query or not patterns:
        return query
    out = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        # parameter names may be percent-encoded; compare the common spellings
        plain = name.replace("%2D", "-").replace("%2d", "-").replace("+", " ")
        if eq and value and _secret_param(plain, patterns):
            out.append(f"{name}={MASK}")
        else:
            out.append(part)
    return "&".join(out)


def redact_url(url: str, params: Iterable[str] | None = None) -> str:
    """``url`` with its userinfo and secret query values replaced by ``***``.

    ``params`` overrides the configured patterns. A string that does not parse as a URL
    is returned with any ``user:password@`` part still hidden.
    """
    patterns = _active[0] if params is None else tuple(p.lower() for p in params)
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"//[^/@\s]*@", f"//{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    query = _redact_query(parts.query, patterns)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redact_text(text: str, params: Iterable[str] | None = None) -> str:
    """Free text with every URL in it redacted (see :func:`redact_url`)."""
    if "://" not in text:
        return text

    def one(match: re.Match[str]) -> str:
        url = match.group(0)
        # punctuation that ends a sentence or a bracket is not part of the URL
        core = url.rstrip(".,;:!?)]}")
        return redact_url(core, params) + url[len(core) :]

    return _URL_RE.sub(one, text)


def redact_value(value: Any) -> Any:
    """A JSON-like value (dicts, lists, strings) with every string redacted; other
    values are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_value(v) for v in value]
    return value
