"""Manifest v1: what a dataset is, where it goes and where its bytes come from.

A manifest is TOML (JSON is accepted too)::

    manifest_version = 1
    name = "cifar10"                 # the job id
    destination = "cifar10"          # a folder under the data root

    [[files]]
    path = "cifar-10-python.tar.gz"  # relative to the destination
    size = 170498071
    md5 = "c58f30108f718f92721af3b95e74349a"
    sources.mirrors = ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    unpack = [{ format = "tar.gz", into = "." }]

Decisions written down here because users meet them:

* **Paths** (destination, file paths, unpack ``into``, pip ``target``, a torrent's
  ``file``) are relative, use ``/``, and are *normalised*: ``./a//b`` becomes ``a/b``.
  Absolute paths, ``..``, backslashes, drive letters (``C:``), control characters, a
  trailing ``/`` on a file path and empty paths are refused. ``into`` may be ``"."``;
  ``destination`` may not (each dataset gets its own folder). Symlinks that leave the
  data root are caught when the daemon places files, by :func:`resolve_under`.
* **Mirrors** are http(s) URLs with a host. A user name or password in a URL is accepted
  (some mirrors need it) but produces a warning: the manifest is stored in the state
  folder as written. :func:`redact_url` hides it in logs and status.
* **A torrent** is exactly one of ``academic_torrents`` (an infohash: 40 hex digits for
  v1, 64 for v2; an ``academictorrents.com/details/<hash>`` URL is accepted too),
  ``magnet``, ``url`` (a .torrent over http(s)) or ``path`` (a local .torrent, which must
  be **absolute**: the manifest is moved out of the inbox, so a relative path would have
  nothing stable to be relative to).
* **Checksums** are lower-cased; each must be hex of the algorithm's exact length. A
  file without any is accepted with a warning (see :meth:`Manifest.warnings`).
* ``bandwidth_limit`` accepts rates such as ``"20M"`` (bytes/s; 0 means no job limit).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from .config import Rate, Size
from .errors import DaemonError
from .manifest_fields import (
    _EXAMPLES,
    _NAME_RE,
    ARCHIVE_SUFFIXES,
    DIGEST_LENGTHS,
    ArchiveFormat,
    _destination,
    _digest_validator,
    _fetched_file,
    _infohash,
    _magnet,
    _mirror,
    _optional,
    _peer,
    _relative_file,
    _relative_folder,
    _Strict,
    _torrent_path,
    _torrent_url,
    archive_format,
    check_relative_path,
    redact_url,
)
from .manifest_steps import (
    ChecksumsSpec,
    FrameworkLayout,
    ImagenetValLayout,
    Layout,
    ListingSpec,
    PipSpec,
)
from .manifest_urllist import UrllistSpec, kind_schema, urllist_cross_check
from .units import Bool, Int, describe_validation_error

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DIGEST_LENGTHS",
    "ChecksumsSpec",
    "FileSpec",
    "FrameworkLayout",
    "ImagenetValLayout",
    "ListingSpec",
    "Manifest",
    "ManifestError",
    "ManifestUnreadable",
    "PipSpec",
    "Sources",
    "TorrentSpec",
    "UnpackStep",
    "archive_format",
    "check_relative_path",
    "load_manifest",
    "manifest_digest",
    "manifest_schema",
    "parse_manifest",
    "redact_url",
    "resolve_under",
]


class TorrentSpec(_Strict):
    """A BitTorrent source: exactly one of academic_torrents, magnet, url or path."""

    academic_torrents: Annotated[str | None, _optional(_infohash)] = None
    """Infohash of an Academic Torrents entry (40 hex digits; 64 for v2), or its
    https://academictorrents.com/details/<infohash> page URL."""
    magnet: Annotated[str | None, _optional(_magnet)] = None
    """A magnet link: magnet:?xt=urn:btih:<infohash>..."""
    url: Annotated[str | None, _optional(_torrent_url)] = None
    """An http(s) URL of a .torrent file."""
    path: Annotated[str | None, _optional(_torrent_path)] = None
    """Absolute path of a local .torrent file."""
    file: Annotated[str | None, _optional(_relative_file)] = None
    """Path of this file inside a multi-file torrent; default: the file's own path."""
    peers: list[Annotated[str, BeforeValidator(_peer)]] = Field(default_factory=list)
    """Peers to try first, as host:port ([v6]:port for IPv6)."""

    KINDS: ClassVar[tuple[str, ...]] = ("academic_torrents", "magnet", "url", "path")

    @model_validator(mode="after")
    def _exactly_one(self) -> TorrentSpec:
        given = [k for k in self.KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            found = f" (found {', '.join(given)})" if given else ""
            raise ValueError("give exactly one of academic_torrents, magnet, url or path" + found)
        return self

    @property
    def kind(self) -> Literal["academic_torrents", "magnet", "url", "path"]:
        """Which of the four ways names the torrent."""
        if self.academic_torrents is not None:
            return "academic_torrents"
        if self.magnet is not None:
            return "magnet"
        if self.url is not None:
            return "url"
        return "path"

    @property
    def value(self) -> str:
        """The infohash, magnet link, URL or path."""
        value = getattr(self, self.kind)
        assert isinstance(value, str)
        return value


def _torrent_table(value: object) -> object:
    """A bare string where a table belongs: say which table to write."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lower = text.lower()
    if lower.startswith("magnet:"):
        key = "magnet"
    elif lower.startswith(("http://", "https://")):
        key = "url"
    elif text.startswith("/"):
        key = "path"
    else:
        key = "academic_torrents"
    raise ValueError(
        f"{text[:60]!r} — a torrent is a table naming its kind: write "
        f'torrent = {{ {key} = "..." }} (one of academic_torrents, magnet, url, path)'
    )


class Sources(_Strict):
    """Where a file's bytes come from: http(s) mirrors and/or a torrent."""

    mirrors: list[Annotated[str, BeforeValidator(_mirror)]] = Field(default_factory=list)
    """http(s) URLs that serve the same file."""
    torrent: Annotated[TorrentSpec | None, BeforeValidator(_torrent_table)] = None
    """A torrent that holds the file."""

    @field_validator("mirrors")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, url in enumerate(value):
            if url in seen:
                raise ValueError(
                    f"{redact_url(url)!r} is listed twice (mirrors[{seen[url]}] and "
                    f"mirrors[{i}]) — remove one"
                )
            seen[url] = i
        return value

    @model_validator(mode="after")
    def _at_least_one(self) -> Sources:
        if not self.mirrors and self.torrent is None:
            raise ValueError(
                'no source — give mirrors = ["https://..."] and/or '
                'torrent = { academic_torrents = "<infohash>" }'
            )
        return self


class UnpackLimits(_Strict):
    """How much one extraction may write; absent values take the daemon's [unpack] limits."""

    max_bytes: Size | None = None
    """Bytes of file data at most ("2TiB" accepted)."""
    max_ratio: float | None = Field(default=None, gt=0)
    """At most this many times the archive's size."""
    max_entries: Int | None = Field(default=None, ge=1)
    """Files, folders and links at most."""


class UnpackStep(_Strict):
    """One extraction of the file once it is verified."""

    format: ArchiveFormat = "auto"
    """Archive format; "auto" tells it from the file name."""
    into: Annotated[str, BeforeValidator(_relative_folder)] = "."
    """Folder to extract into, relative to the destination."""
    nested: Bool = False
    """Also extract archives found inside the archive."""
    delete_archive: Bool = False
    """Delete the archive once it has been extracted."""
    limits: UnpackLimits | None = None
    """Override the daemon's extraction limits for this archive."""


class FileSpec(_Strict):
    """One file of a dataset."""

    path: Annotated[str, BeforeValidator(_fetched_file)]
    """Where the file goes, relative to the destination ('/' separates folders)."""
    size: Int | None = Field(default=None, ge=0)
    """Size in bytes, if known: checked, and reserved on disk before the download starts."""
    sha256: Annotated[str | None, _digest_validator("sha256")] = Field(
        default=None, json_schema_extra={"pattern": "^[0-9a-fA-F]{64}$"}
    )
    sha512: Annotated[str | None, _digest_validator("sha512")] = Field(
        default=None, json_schema_extra={"pattern": "^[0-9a-fA-F]{128}$"}
    )
    sha1: Annotated[str | None, _digest_validator("sha1")] = Field(
        default=None, json_schema_extra={"pattern": "^[0-9a-fA-F]{40}$"}
    )
    md5: Annotated[str | None, _digest_validator("md5")] = Field(
        default=None, json_schema_extra={"pattern": "^[0-9a-fA-F]{32}$"}
    )
    blake2b: Annotated[str | None, _digest_validator("blake2b")] = Field(
        default=None, json_schema_extra={"pattern": "^[0-9a-fA-F]{128}$"}
    )
    sources: Sources
    """Where the bytes come from."""
    connections: Int | None = Field(default=None, ge=1, le=64)
    """Parallel HTTP connections for this file (default: the manifest's, else the config's)."""
    unpack: list[UnpackStep] = Field(default_factory=list)
    """Extractions to run once the file is verified."""

    @property
    def digests(self) -> dict[str, str]:
        """The checksums given, by algorithm: ``{"md5": "c58f..."}``."""
        out: dict[str, str] = {}
        for algorithm in DIGEST_LENGTHS:
            value = getattr(self, algorithm)
            if value is not None:
                out[algorithm] = value
        return out

    @property
    def has_digest(self) -> bool:
        """Whether the file can be verified."""
        return bool(self.digests)


def _name(value: object) -> object:
    if isinstance(value, str) and not _NAME_RE.match(value):
        raise ValueError(
            f"{value!r} — a name is 1 to 128 letters, digits, '.', '_' or '-', starting with "
            "a letter or digit (it is the job id), e.g. 'cifar10'"
        )
    return value


def _version(value: object) -> object:
    if type(value) is not int or value != 1:
        raise ValueError(
            f"{value!r} — this daemon reads manifest_version 1; write manifest_version = 1"
        )
    return value


class Manifest(_Strict):
    """A dataset: its name (the job id), destination under the data root, and files."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, json_schema_extra=kind_schema
    )

    manifest_version: Annotated[Literal[1], BeforeValidator(_version)]
    """Always 1."""
    kind: Literal["files", "urllist"] = "files"
    """files: the files listed; urllist: a list of URLs fetched into shards ([urllist])."""
    name: Annotated[str, BeforeValidator(_name)]
    """The job id: letters, digits, '.', '_', '-' (at most 128, starting alphanumeric)."""
    description: str = ""
    """Free text shown in status."""
    destination: Annotated[str, BeforeValidator(_destination)]
    """The dataset's folder, relative to the data root."""
    connections: Int | None = Field(default=None, ge=1, le=64)
    """Default parallel HTTP connections for this dataset's files."""
    bandwidth_limit: Rate | None = Field(default=None, ge=0)
    """Rate limit for this job in bytes/s ("20M" accepted); 0 or absent: none."""
    files: list[FileSpec] = Field(default_factory=list)
    """The files of the dataset (at least one for kind "files"; for kind "urllist", the
    URL list itself, fetched and verified first)."""
    urllist: UrllistSpec | None = None
    """A URL-list job's input, shards, filters, resizing and deduplication."""
    pip: PipSpec | None = None
    """Python wheels to fetch alongside."""
    checksums: list[ChecksumsSpec] = Field(default_factory=list)
    """Checksum files of the dataset, checked once every file is done."""
    layout: list[Layout] = Field(default_factory=list)
    """Layouts made once every file is done, in this order."""
    listing: list[ListingSpec] = Field(default_factory=list)
    """Listings written (and counts checked) last."""

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A files job dumps as it did before kinds existed: same stored JSON, same digest.
        data: dict[str, Any] = handler(self)
        if self.kind == "files" and self.urllist is None:
            data.pop("kind", None)
            data.pop("urllist", None)
        return data

    @property
    def has_job_steps(self) -> bool:
        """Whether anything runs once every file is done."""
        return bool(self.pip or self.checksums or self.layout or self.listing)

    def relative_paths(self) -> list[tuple[str, str]]:
        """Every (field path, path relative to the destination) the job writes or reads,
        so the daemon can check each stays under the data root."""
        out: list[tuple[str, str]] = []
        for i, f in enumerate(self.files):
            out.append((f"files[{i}].path", f.path))
            out += [(f"files[{i}].unpack[{j}].into", u.into) for j, u in enumerate(f.unpack)]
        if self.urllist is not None:
            out.append(("urllist.input", self.urllist.input))
        if self.pip is not None:
            out.append(("pip.target", self.pip.target))
        for i, c in enumerate(self.checksums):
            out.append((f"checksums[{i}].file", c.file))
            if c.base is not None:
                out.append((f"checksums[{i}].base", c.base))
        for i, lay in enumerate(self.layout):
            names = ("images", "ground_truth", "synsets", "labels", "root", "file", "into")
            for name in names:
                value = getattr(lay, name, None)
                if isinstance(value, str):
                    out.append((f"layout[{i}].{name}", value))
        for i, li in enumerate(self.listing):
            out.append((f"listing[{i}].root", li.root))
            if li.path is not None:
                out.append((f"listing[{i}].path", li.path))
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> Manifest:
        # These errors need a field path with a list index, which a plain ValueError from
        # here cannot carry; ManifestError passes through pydantic unchanged.
        errors = _cross_check(self)
        if errors:
            raise ManifestError(errors)
        return self

    def warnings(self) -> list[str]:
        """Things that are accepted but worth telling the operator, one line each."""
        out: list[str] = []
        for i, f in enumerate(self.files):
            if not f.has_digest:
                out.append(f"files[{i}] ({f.path}): no checksum; the file cannot be verified")
            for j, url in enumerate(f.sources.mirrors):
                parts = urlsplit(url)
                if parts.username is not None or parts.password is not None:
                    out.append(
                        f"files[{i}].sources.mirrors[{j}]: the URL carries a user name or "
                        "password; it is kept in the state folder as written"
                    )
        return out


def _cross_check(m: Manifest) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = urllist_cross_check(m.kind, m.urllist, len(m.files))
    seen: dict[str, int] = {}
    for i, f in enumerate(m.files):
        if f.path in seen:
            errors.append(
                (
                    f"files[{i}].path",
                    f"'{f.path}' is also files[{seen[f.path]}].path — each file needs its own "
                    "path; remove the duplicate",
                )
            )
        else:
            seen[f.path] = i
    # A path cannot be both a file and a folder ("a" and "a/b"), and "x.part" is where
    # the download of "x" is kept until it is verified.
    for i, f in enumerate(m.files):
        parts = f.path.split("/")
        for k in range(1, len(parts)):
            parent = "/".join(parts[:k])
            if parent in seen:
                errors.append(
                    (
                        f"files[{i}].path",
                        f"'{f.path}' is inside '{parent}', which is files[{seen[parent]}] — "
                        "a path cannot be both a file and a folder",
                    )
                )
                break
        if f.path.endswith(".part") and f.path[: -len(".part")] in seen:
            errors.append(
                (
                    f"files[{i}].path",
                    f"'{f.path}' is where files[{seen[f.path[:-5]]}] is downloaded to before "
                    "it is verified — rename one of them",
                )
            )
        for j, step in enumerate(f.unpack):
            if step.format == "auto" and archive_format(f.path) is None:
                errors.append(
                    (
                        f"files[{i}].unpack[{j}].format",
                        f"cannot tell the archive format of '{f.path}' from its name — set "
                        "format to one of tar, tar.gz, tar.bz2, tar.xz, tar.zst, zip, gz, "
                        "bz2, xz, zst",
                    )
                )
    return errors


class ManifestError(DaemonError):
    """The manifest is invalid. ``str()`` is one line per error:
    ``FILE: files[2].sources.mirrors[0]: scheme 'ftp' is not supported — use ...``."""

    code: ClassVar[str] = "manifest.invalid"
    hint: ClassVar[str] = (
        "Fix the fields named above and drop the manifest into the inbox again "
        "(or run `acquirectl add FILE`); `acquirectl schema` prints the full format."
    )

    def __init__(
        self,
        errors: list[tuple[str, str]] | str,
        source: str = "<manifest>",
        **details: object,
    ) -> None:
        if isinstance(errors, str):
            errors = [("", errors)]
        self.source = source
        self.errors: list[tuple[str, str]] = list(errors)
        lines = [f"{source}: {f}: {m}" if f else f"{source}: {m}" for f, m in self.errors]
        super().__init__(
            "\n".join(lines),
            source=source,
            errors=[{"field": f, "message": m} for f, m in self.errors],
            **details,
        )

    def with_source(self, source: str) -> ManifestError:
        """The same errors, attributed to ``source``."""
        return type(self)(self.errors, source)


class ManifestUnreadable(ManifestError):
    """The manifest file could not be read at all (missing, a folder, no permission)."""

    code: ClassVar[str] = "manifest.unreadable"
    hint: ClassVar[str] = (
        "Check that the file exists and that the daemon's user can read it, then drop it "
        "into the inbox again."
    )


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key '{key}' appears twice in one object — keep one")
        out[key] = value
    return out


def parse_manifest(
    text: str | bytes, source: str, fmt: Literal["toml", "json"] | None = None
) -> Manifest:
    """Parse and validate a manifest. ``fmt`` None: by ``source``'s suffix (``.toml``,
    ``.json``), else JSON when the text starts with ``{``, else TOML.

    Raises :class:`ManifestError` with every problem found, each with its field path.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ManifestError(
                [("", f"not UTF-8 text (byte {exc.start}) — save the manifest as UTF-8")],
                source,
            ) from None
    text = text.removeprefix("\ufeff")
    if fmt is None:
        suffix = Path(source).suffix.lower()
        if suffix == ".json":
            fmt = "json"
        elif suffix == ".toml":
            fmt = "toml"
        else:
            fmt = "json" if text.lstrip().startswith("{") else "toml"
    data: object
    if fmt == "json":
        try:
            data = json.loads(text, object_pairs_hook=_json_object)
        except json.JSONDecodeError as exc:
            raise ManifestError(
                [("", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")],
                source,
            ) from None
        except ValueError as exc:
            raise ManifestError([("", f"invalid JSON: {exc}")], source) from None
        if not isinstance(data, dict):
            raise ManifestError([("", "a JSON manifest must be one object { ... }")], source)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ManifestError([("", f"invalid TOML: {exc}")], source) from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(Manifest, exc, _EXAMPLES), source) from None
    except ManifestError as exc:
        raise exc.with_source(source) from None


def load_manifest(path: Path) -> Manifest:
    """Read and validate the manifest at ``path`` (errors name ``str(path)``)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ManifestUnreadable("no such file", source) from None
    except IsADirectoryError:
        raise ManifestUnreadable("is a folder, not a manifest file", source) from None
    except OSError as exc:
        raise ManifestUnreadable(f"cannot read the file: {exc.strerror}", source) from None
    return parse_manifest(raw, source)


def manifest_digest(manifest: Manifest) -> str:
    """sha256 (hex) of the canonical JSON of the validated manifest.

    Defaults are filled in and paths normalised before hashing, so the same manifest
    written differently (TOML or JSON, other key order, ``./a`` for ``a``) has one digest.
    """
    canonical = json.dumps(
        manifest.model_dump(mode="json"),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of manifest v1 (what ``acquirectl schema`` prints)."""
    schema = Manifest.model_json_schema()
    schema["title"] = "acquired manifest v1"
    return schema


def resolve_under(root: Path, relative: str, field: str, source: str) -> Path:
    """``root / relative`` with symlinks resolved; :class:`ManifestError` if it leaves root.

    The existing part of the path is resolved (``Path.resolve``), so a symlink inside the
    data root that points outside it is caught. ``relative`` is checked with the same
    rules as manifest paths first. The result may be ``root`` itself (``"."``).
    """
    try:
        normal = check_relative_path(relative, folder=True, allow_dot=True)
    except ValueError as exc:
        raise ManifestError([(field, str(exc))], source) from None
    base = Path(root).resolve()
    target = (base / normal).resolve()
    if not target.is_relative_to(base):
        raise ManifestError(
            [
                (
                    field,
                    f"'{relative}' leaves the data root {base} (it resolves to {target}, "
                    "through a symbolic link) — remove the link or choose another path",
                )
            ],
            source,
        )
    return target
