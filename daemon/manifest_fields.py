"""The field checks of manifests: relative paths, URLs, digests, infohashes, magnets,
peers — each turns a raw value into a normalised one or raises ``ValueError`` with
what to do."""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit, urlunsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict

from acquired.common.digests import ALGORITHMS, normalize_digest
from acquired.common.errors import InvalidDigest

from .units import parse_host_port

#: The checksums a ``[[files]]`` entry may carry, with their length in hex digits.
DIGEST_LENGTHS: dict[str, int] = ALGORITHMS

# Longest suffix first, so "a.tar.gz" is "tar.gz" and not "gz".
ARCHIVE_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar.bz2", "tar.bz2"),
    (".tbz2", "tar.bz2"),
    (".tbz", "tar.bz2"),
    (".tar.xz", "tar.xz"),
    (".txz", "tar.xz"),
    (".tar.zst", "tar.zst"),
    (".tzst", "tar.zst"),
    (".tar", "tar"),
    (".zip", "zip"),
    (".gz", "gz"),
    (".bz2", "bz2"),
    (".xz", "xz"),
    (".zst", "zst"),
)

ArchiveFormat = Literal[
    "auto", "tar", "tar.gz", "tar.bz2", "tar.xz", "tar.zst", "zip", "gz", "bz2", "xz", "zst"
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX_RE = re.compile(r"^[0-9a-f]*$")
_BASE32_RE = re.compile(r"^[A-Z2-7]{32}$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")

# Shown when a required key is missing.
_EXAMPLES = {
    "manifest_version": "manifest_version = 1",
    "name": 'name = "cifar10"',
    "destination": 'destination = "cifar10"',
    "files": '[[files]] path = "data.tar.gz" sources.mirrors = ["https://..."]',
    "path": 'path = "data.tar.gz"',
    "sources": 'sources.mirrors = ["https://example.org/data.tar.gz"]',
    "requirements": 'requirements = ["numpy==2.0.0"]',
}


def archive_format(path: str) -> str | None:
    """The archive format implied by a file name (``"a.tgz"`` -> ``"tar.gz"``), or None."""
    lower = path.lower()
    for suffix, fmt in ARCHIVE_SUFFIXES:
        if lower.endswith(suffix):
            return fmt
    return None


def check_relative_path(value: object, *, folder: bool = False, allow_dot: bool = False) -> str:
    """Validate and normalise a relative path; raise ``ValueError`` saying what to write.

    ``folder`` allows a trailing ``/``; ``allow_dot`` allows ``"."`` (the base itself).
    """
    example = "'images/train.tar'"
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — must be a path string such as {example}")
    if not value.strip():
        raise ValueError(f"must not be empty — give a relative path such as {example}")
    if any(unicodedata.category(c) == "Cc" for c in value):
        raise ValueError(f"{value!r} contains a control character — remove it")
    if value != value.strip():
        raise ValueError(f"{value!r} starts or ends with a space — remove it")
    if "\\" in value:
        raise ValueError(f"{value!r} contains a backslash — separate folders with '/'")
    if value.startswith("/"):
        raise ValueError(
            f"{value!r} is absolute — give a path relative to the destination, such as {example}"
        )
    if _DRIVE_RE.match(value):
        raise ValueError(f"{value!r} looks like a drive letter — give a relative path")
    raw_parts = value.split("/")
    if ".." in raw_parts:
        raise ValueError(
            f"{value!r} contains '..' — paths must stay inside the destination; "
            "remove the '..' parts"
        )
    if value.endswith("/") and not folder:
        raise ValueError(f"{value!r} ends with '/' — name a file, not a folder")
    parts = [p for p in raw_parts if p not in ("", ".")]
    if not parts:
        if allow_dot:
            return "."
        raise ValueError(f"{value!r} names no file or folder — give a path such as {example}")
    for part in parts:
        if len(part.encode("utf-8")) > 255:
            raise ValueError(f"{value!r}: the name {part[:20]!r}... is longer than 255 bytes")
    normal = "/".join(parts)
    if len(normal.encode("utf-8")) > 4000:
        raise ValueError(f"{value[:40]!r}... is longer than 4000 bytes — shorten it")
    return normal


def _relative_file(value: object) -> str:
    return check_relative_path(value)


# The longest suffix the daemon appends to a fetched file's name (``NAME.part`` while it
# is in flight); the file system's NAME_MAX is 255 bytes, so the name itself must leave
# room for it. Extraction and placement keep their own temporary names short.
NAME_MAX = 255
FETCH_SUFFIX = ".part"


def _fetched_file(value: object) -> str:
    normal = check_relative_path(value)
    name = normal.rpartition("/")[2]
    room = NAME_MAX - len(FETCH_SUFFIX)
    if len(name.encode("utf-8")) > room:
        raise ValueError(
            f"the file name {name[:20]!r}... is {len(name.encode('utf-8'))} bytes; while it "
            f"is fetched it is written as NAME{FETCH_SUFFIX}, and a name may have at most "
            f"{NAME_MAX} bytes — shorten it to {room} bytes or less"
        )
    return normal


def _relative_folder(value: object) -> str:
    return check_relative_path(value, folder=True, allow_dot=True)


def _destination(value: object) -> str:
    try:
        normal = check_relative_path(value, folder=True, allow_dot=True)
    except ValueError as exc:
        # the rules are those of paths in the destination; this one is in the data root
        raise ValueError(str(exc).replace("the destination", "the data root")) from None
    if normal == ".":
        raise ValueError(
            f"{value!r} is the data root itself — give the dataset its own folder, "
            'e.g. destination = "cifar10"'
        )
    return normal


def _http_url(value: object, what: str = "URL") -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — must be a URL string such as 'https://example.org/a.tar'")
    text = value.strip()
    if any(c.isspace() for c in text) or any(ord(c) < 32 for c in text):
        raise ValueError(f"{value!r} contains spaces — percent-encode them (%20)")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme == "magnet":
        raise ValueError(
            "scheme 'magnet' is not supported here — put magnet links in "
            'sources.torrent = { magnet = "..." }'
        )
    if scheme not in ("", "http", "https") and text.lower().startswith(scheme + ":/"):
        raise ValueError(f"scheme '{scheme}' is not supported — use an http(s) URL")
    if not scheme or not parts.netloc:
        raise ValueError(
            f"{value!r} is not a full {what} — write it with its scheme and host, "
            "e.g. 'https://example.org/data.tar.gz'"
        )
    if scheme not in ("http", "https"):
        raise ValueError(f"scheme '{scheme}' is not supported — use an http(s) URL")
    try:
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port — use a number from 1 to 65535") from None
    if not host:
        raise ValueError(f"{value!r} has no host name — e.g. 'https://example.org/data.tar.gz'")
    return text


def _mirror(value: object) -> str:
    return _http_url(value)


def redact_url(url: str) -> str:
    """The URL with any user name and password replaced by ``***`` (for logs and status)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def _digest_validator(algorithm: str) -> Any:
    def check(value: object) -> object:
        if value is None:
            return None
        try:
            # A manifest's blake2b is the full 512 bits, as its schema pattern says.
            return normalize_digest(algorithm, value, short_blake2b=False)
        except InvalidDigest as exc:
            raise ValueError(str(exc)) from None

    return BeforeValidator(check)


def _infohash(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — an infohash is a string of 40 hex digits")
    text = value.strip()
    parts = urlsplit(text)
    if parts.scheme in ("http", "https"):
        # An Academic Torrents page URL: .../details/<infohash>
        segments = [s for s in parts.path.split("/") if s]
        if len(segments) >= 2 and segments[-2] == "details":
            text = segments[-1]
        else:
            raise ValueError(
                f"{value!r} — give the infohash (40 hex digits), or the "
                "'https://academictorrents.com/details/<infohash>' page URL"
            )
    text = text.lower()
    if not _HEX_RE.match(text) or len(text) not in (40, 64):
        raise ValueError(
            f"{value!r} is not an infohash — give the 40 hex digits shown on the dataset's "
            "Academic Torrents page (64 for a v2 torrent)"
        )
    return text


def _magnet(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — a magnet link is a string 'magnet:?xt=urn:btih:...'")
    text = value.strip()
    if not text.lower().startswith("magnet:?"):
        raise ValueError(
            f"{text[:40]!r} is not a magnet link — it must start 'magnet:?xt=urn:btih:'"
        )
    query = parse_qs(text[len("magnet:?") :])
    for topic in query.get("xt", []):
        lower = topic.lower()
        if lower.startswith("urn:btih:"):
            digest = topic[len("urn:btih:") :]
            if (len(digest) == 40 and _HEX_RE.match(digest.lower())) or _BASE32_RE.match(
                digest.upper()
            ):
                return text
        if lower.startswith("urn:btmh:1220"):
            digest = lower[len("urn:btmh:1220") :]
            if len(digest) == 64 and _HEX_RE.match(digest):
                return text
    raise ValueError(
        f"{text[:60]!r} has no BitTorrent infohash — a magnet link needs "
        "'xt=urn:btih:<40 hex digits>' (or 'xt=urn:btmh:1220<64 hex digits>' for v2)"
    )


def _torrent_path(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} — give the absolute path of a .torrent file")
    if "\x00" in value:
        raise ValueError(f"{value!r} contains a NUL character — remove it")
    if not value.startswith("/"):
        raise ValueError(
            f"{value!r} is relative — give an absolute path such as '/srv/torrents/x.torrent': "
            "the manifest is moved out of the inbox, so a relative path has no fixed base"
        )
    return os.path.normpath(value)


def _torrent_url(value: object) -> str:
    return _http_url(value, ".torrent URL")


def _index_url(value: object) -> str:
    return _http_url(value, "index URL")


def _peer(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — a peer is 'host:port', e.g. '192.0.2.7:6881'")
    parse_host_port(value)
    return value.strip()


def _optional(check: Callable[[object], str]) -> BeforeValidator:
    """Run ``check`` unless the value is None (the key left out)."""
    return BeforeValidator(lambda v: None if v is None else check(v))


class _Strict(BaseModel):
    # Attribute docstrings become descriptions in the JSON Schema (`acquirectl schema`).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
