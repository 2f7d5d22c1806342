"""Where a torrent comes from, and turning that into libtorrent's add_torrent_params.

Sources: an Academic Torrents infohash (its .torrent is fetched from
``{academic_torrents_url}/download/{infohash}.torrent``, checked against the infohash and
cached in the state dir), a magnet URI, a .torrent URL, or a local .torrent path.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import libtorrent as lt
import requests

from acquired.sources.torrent.errors import (
    FileNotInTorrent,
    InfohashMismatch,
    InvalidTorrent,
    TorrentFetchFailed,
    TorrentNotFound,
)

_HEX = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")


@dataclass(frozen=True)
class InfoHash:
    """An Academic Torrents (or any) infohash: 40 hex digits (v1) or 64 (v2)."""

    value: str


@dataclass(frozen=True)
class Magnet:
    """A magnet URI."""

    uri: str


@dataclass(frozen=True)
class TorrentUrl:
    """A .torrent file over HTTP(S)."""

    url: str


@dataclass(frozen=True)
class TorrentFile:
    """A .torrent file on disk."""

    path: Path


TorrentSource = InfoHash | Magnet | TorrentUrl | TorrentFile


def parse_source(text: str) -> TorrentSource:
    """Read a manifest's torrent field: magnet URI, http(s) URL, infohash, or a path."""
    text = text.strip()
    if text.startswith("magnet:"):
        return Magnet(text)
    if text.startswith(("http://", "https://")):
        return TorrentUrl(text)
    if _HEX.match(text):
        return InfoHash(text.lower())
    return TorrentFile(Path(text))


def source_label(source: TorrentSource) -> str:
    """A short human description of a source, for messages."""
    match source:
        case InfoHash(value):
            return f"infohash {value}"
        case Magnet(uri):
            return f"magnet {uri[:80]}"
        case TorrentUrl(url):
            return url
        case TorrentFile(path):
            return str(path)


def infohash_hex(hashes: lt.info_hash_t) -> str:
    """The v1 infohash in hex when there is one, else the v2 one (64 hex digits)."""
    if hashes.has_v1():
        return str(hashes.v1)
    return str(hashes.v2)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse(data: bytes, origin: str) -> lt.torrent_info:
    try:
        return lt.torrent_info(data)
    except RuntimeError as exc:
        raise InvalidTorrent(
            f"{origin} is not a valid .torrent file: {exc}", origin=origin, error=str(exc)
        ) from exc


def _http_get(url: str, timeout: float, what: str) -> bytes:
    try:
        response = requests.get(url, timeout=timeout, headers={"User-Agent": "acquired/0.1.0"})
    except requests.RequestException as exc:
        raise TorrentFetchFailed(
            f"cannot fetch {what} from {url}: {exc}", url=url, error=str(exc)
        ) from exc
    if response.status_code != 200:
        raise TorrentFetchFailed(
            f"cannot fetch {what} from {url}: HTTP {response.status_code}",
            url=url,
            status=response.status_code,
        )
    return response.content


def _matches(ti: lt.torrent_info, wanted: str) -> bool:
    hashes = ti.info_hashes()
    have = set()
    if hashes.has_v1():
        have.add(str(hashes.v1))
    if hashes.has_v2():
        have.add(str(hashes.v2))
    return wanted.lower() in have


def resolve_infohash(
    infohash: str, base_url: str, cache_dir: Path, timeout: float
) -> lt.torrent_info:
    """The .torrent for ``infohash`` from the cache or Academic Torrents, checked to match."""
    infohash = infohash.lower()
    if not _HEX.match(infohash):
        raise InvalidTorrent(
            f"{infohash!r} is not an infohash (40 or 64 hex digits)", infohash=infohash
        )
    cached = cache_dir / f"{infohash}.torrent"
    if cached.is_file():
        try:
            ti = lt.torrent_info(cached.read_bytes())
            if _matches(ti, infohash):
                return ti
        except RuntimeError:
            pass  # a damaged cache entry is fetched again
    url = f"{base_url.rstrip('/')}/download/{infohash}.torrent"
    data = _http_get(url, timeout, f"the .torrent for infohash {infohash}")
    ti = _parse(data, url)
    if not _matches(ti, infohash):
        actual = infohash_hex(ti.info_hashes())
        raise InfohashMismatch(
            f"the .torrent served by {url} has infohash {actual}, not {infohash}; refused",
            expected=infohash,
            actual=actual,
            url=url,
        )
    _write_atomic(cached, data)
    return ti


def load_params(
    source: TorrentSource, base_url: str, cache_dir: Path, timeout: float
) -> lt.add_torrent_params:
    """add_torrent_params for ``source`` (``ti`` set, except for magnets). Blocks on HTTP."""
    atp = lt.add_torrent_params()
    match source:
        case InfoHash(value):
            atp.ti = resolve_infohash(value, base_url, cache_dir, timeout)
        case TorrentUrl(url):
            atp.ti = _parse(_http_get(url, timeout, "the .torrent"), url)
        case TorrentFile(path):
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise TorrentNotFound(
                    f"cannot read the .torrent file {path}: {exc.strerror or exc}", path=str(path)
                ) from exc
            atp.ti = _parse(data, str(path))
        case Magnet(uri):
            try:
                atp = lt.parse_magnet_uri(uri)
            except RuntimeError as exc:
                raise InvalidTorrent(
                    f"{uri!r} is not a valid magnet URI: {exc}", uri=uri, error=str(exc)
                ) from exc
    return atp


def expected_infohash(source: TorrentSource) -> str | None:
    """The infohash a source names by itself (infohash, magnet), else None."""
    match source:
        case InfoHash(value):
            return value.lower()
        case Magnet(uri):
            try:
                return infohash_hex(lt.parse_magnet_uri(uri).info_hashes)
            except RuntimeError:
                return None
        case _:
            return None


def torrent_files(ti: lt.torrent_info) -> list[tuple[int, str, int]]:
    """(index, path in torrent with '/' separators, size) of each real file (no pad files)."""
    fs = ti.layout()
    out = []
    for i in range(fs.num_files()):
        if fs.file_flags(i) & lt.file_storage.flag_pad_file:
            continue
        out.append((i, fs.file_path(i).replace(os.sep, "/"), fs.file_size(i)))
    return out


def map_files(
    files: list[tuple[int, str, int]],
    wanted: Mapping[str, Path] | None,
    save_dir: Path,
    torrent_name: str,
) -> dict[int, tuple[str, Path]]:
    """Which torrent files to fetch and where: {index: (path in torrent, final path)}.

    ``wanted`` maps a path in the torrent (with or without the torrent's top folder) to a
    final path (relative paths are under ``save_dir``); None means every file, under
    ``save_dir`` as the torrent lays them out. A name the torrent lacks raises
    FileNotInTorrent listing what it contains.
    """
    if wanted is None:
        return {i: (path, save_dir / path) for i, path, _ in files}
    by_path: dict[str, int] = {}
    for i, path, _ in files:
        by_path[path] = i
        parts = PurePosixPath(path).parts
        if len(parts) > 1 and parts[0] == torrent_name:
            by_path.setdefault(str(PurePosixPath(*parts[1:])), i)
    out: dict[int, tuple[str, Path]] = {}
    missing = []
    for name, final in wanted.items():
        norm = str(PurePosixPath(name.replace("\\", "/").lstrip("/")))
        index = by_path.get(norm)
        if index is None:
            missing.append(name)
            continue
        out[index] = (name, final if Path(final).is_absolute() else save_dir / final)
    if missing:
        contains = [path for _, path, _ in files]
        shown = ", ".join(contains[:20]) + (
            f", ... ({len(contains)} files)" if len(contains) > 20 else ""
        )
        raise FileNotInTorrent(
            f"torrent {torrent_name!r} has no file {', '.join(map(repr, missing))}; "
            f"it contains: {shown}",
            missing=missing,
            contains=contains[:1000],
            torrent=torrent_name,
        )
    return out
