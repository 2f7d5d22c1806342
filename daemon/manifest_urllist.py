"""The ``[urllist]`` section of a ``kind = "urllist"`` manifest: a list of URLs fetched
into verified shards.

::

    manifest_version = 1
    kind = "urllist"
    name = "laion-part0"
    destination = "laion/part0"

    [urllist]
    input = "part-00000.parquet"   # relative to the destination; txt csv tsv jsonl parquet
    url_column = "URL"             # not for txt (one URL per line)
    caption_column = "TEXT"        # optional, written as KEY.txt
    keep_columns = ["WIDTH"]       # optional, into KEY.json and the shard's parquet
    shard_size = 10000
    output = "webdataset"          # or "files"
    timeout = 10                   # seconds per request, connect + body
    retries = 2                    # temporary failures only
    per_host_connections = 16
    max_bytes = "20M"              # a larger body is a failure (too_large)

    [urllist.filters]              # min_side, max_aspect, max_pixels, mime
    [urllist.resize]               # optional: mode, size, format, quality
    [urllist.dedupe]               # optional: exact, perceptual, action

Decisions written down here because users meet them:

* ``input`` may end in ``.gz`` or ``.zst`` for txt, csv, tsv and jsonl; a parquet file is
  compressed inside already, so ``x.parquet.gz`` is refused.
* A txt input has no columns: ``caption_column`` and ``keep_columns`` are refused for it,
  and ``url_column`` is ignored.
* ``max_bytes_on_disk`` (optional) is the job's quota: reached, the job pauses with that
  reason (the issue's "stop at 5,000 GB").
* The filters' defaults keep every image Pillow can open safely: no minimum side, no
  aspect limit, ``max_pixels`` = Pillow's decompression-bomb limit (89,478,485), and the
  three image types browsers and training pipelines share (JPEG, PNG, WebP).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from .config import Size
from .units import Bool, Float, Int

__all__ = [
    "INPUT_FORMATS",
    "DedupeSpec",
    "FiltersSpec",
    "PerceptualSpec",
    "ResizeSpec",
    "UrllistSpec",
    "input_format",
    "kind_schema",
    "urllist_cross_check",
]

INPUT_FORMATS = ("txt", "csv", "tsv", "jsonl", "parquet")
_COMPRESSIONS = (".gz", ".zst")
PILLOW_MAX_PIXELS = 89_478_485
_MIME_RE = re.compile(r"^image/[a-z0-9][a-z0-9.+-]*$")


def input_format(path: str) -> tuple[str, str | None]:
    """``(format, compression)`` of an input by its name: ``("csv", "gz")`` for
    ``a.csv.gz``. Raises ``ValueError`` saying what is accepted."""
    lower = path.lower()
    compression = None
    for suffix in _COMPRESSIONS:
        if lower.endswith(suffix):
            compression = suffix[1:]
            lower = lower[: -len(suffix)]
    fmt = lower.rsplit(".", 1)[-1] if "." in lower.rsplit("/", 1)[-1] else ""
    if fmt not in INPUT_FORMATS:
        raise ValueError(
            f"{path!r}: cannot tell the input format from the name — it must end in "
            ".txt, .csv, .tsv, .jsonl or .parquet (the first four may be .gz or .zst "
            "compressed)"
        )
    if fmt == "parquet" and compression:
        raise ValueError(
            f"{path!r}: a parquet file is compressed inside already — give the .parquet file itself"
        )
    return fmt, compression


def _input(value: object) -> str:
    # Imported here: manifest.py imports this module while it is being defined.
    from .manifest import check_relative_path

    path = check_relative_path(value)
    input_format(path)
    return path


def _column(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — a column name is a string (in quotes)")
    if not value.strip():
        raise ValueError("must not be empty — name a column of the input")
    return value


def _mime(value: object) -> str:
    if not isinstance(value, str) or not _MIME_RE.match(value.strip().lower()):
        raise ValueError(
            f"{value!r} is not an image type — write e.g. 'image/jpeg', 'image/png', 'image/webp'"
        )
    return value.strip().lower()


Column = Annotated[str, BeforeValidator(_column)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class FiltersSpec(_Strict):
    """``[urllist.filters]``: samples dropped (with their class) before any full decode."""

    min_side: Int = Field(default=0, ge=0, le=1_000_000)
    """Pixels: an image whose shorter side is smaller is filtered_small; 0 = no minimum."""
    max_aspect: Float | None = Field(default=None, ge=1.0)
    """Longer side / shorter side above this: filtered_aspect; absent = no limit."""
    max_pixels: Int = Field(default=PILLOW_MAX_PIXELS, ge=1)
    """Width x height above this is refused before decoding (decompression bombs)."""
    mime: list[Annotated[str, BeforeValidator(_mime)]] = Field(
        default_factory=lambda: ["image/jpeg", "image/png", "image/webp"], min_length=1
    )
    """Image types kept, as sniffed from the bytes (not as the server claims)."""


class ResizeSpec(_Strict):
    """``[urllist.resize]``: re-encode every kept image; absent = keep the original bytes."""

    mode: Literal["keep_ratio", "center_crop", "border"] = "keep_ratio"
    """keep_ratio: the longer side becomes ``size``; center_crop: a size x size crop of the
    centre; border: fitted into size x size with a border."""
    size: Int = Field(ge=1, le=16384)
    """Pixels."""
    format: Literal["jpg", "png", "webp"] = "jpg"
    """Encoding of the resized image."""
    quality: Int = Field(default=95, ge=1, le=100)
    """JPEG/WebP quality."""


class PerceptualSpec(_Strict):
    """``perceptual = { hash = "phash", max_distance = 4 }``."""

    hash: Literal["phash", "dhash", "ahash", "whash"] = "phash"
    """The perceptual hash (64 bits, from imagehash)."""
    max_distance: Int = Field(default=4, ge=0, le=32)
    """Hashes within this many differing bits are duplicates."""


class DedupeSpec(_Strict):
    """``[urllist.dedupe]``: duplicates across the whole job; the first sample seen is kept."""

    exact: Bool = True
    """Same bytes (sha256)."""
    perceptual: PerceptualSpec | None = None
    """Near-duplicates by perceptual hash; absent = off."""
    action: Literal["drop", "mark"] = "drop"
    """drop: not written to the shard; mark: kept, flagged (duplicate_of) in the parquet."""


class UrllistSpec(_Strict):
    """``[urllist]``: where the URLs are and how they become shards."""

    input: Annotated[str, BeforeValidator(_input)]
    """The URL list, relative to the destination (one of [[files]], or already there)."""
    url_column: Column = "url"
    """The column holding the URL (csv, tsv, jsonl, parquet); txt has one URL per line."""
    caption_column: Column | None = None
    """A column written as KEY.txt."""
    keep_columns: list[Column] = Field(default_factory=list)
    """Columns carried into KEY.json and the shard's parquet."""
    shard_size: Int = Field(default=10_000, ge=1, le=1_000_000)
    """Input rows per shard (the unit of work, of output and of retry)."""
    output: Literal["webdataset", "files"] = "webdataset"
    """webdataset: NNNNN.tar; files: a folder per shard."""
    timeout: Float = Field(default=10.0, gt=0, le=3600)
    """Seconds per request, connect and body together."""
    retries: Int = Field(default=2, ge=0, le=20)
    """Tries again after a temporary failure (timeout, reset, 5xx, 429)."""
    per_host_connections: Int = Field(default=16, ge=1, le=1024)
    """Concurrent requests to one host."""
    max_bytes: Size = Field(default=20_000_000, ge=1)
    """A body larger than this is a failure (too_large), not a download."""
    max_bytes_on_disk: Size | None = Field(default=None, ge=1)
    """The job's quota: reached, the job pauses with that reason."""
    filters: FiltersSpec = Field(default_factory=FiltersSpec)
    """Samples dropped before decoding."""
    resize: ResizeSpec | None = None
    """Re-encoding; absent = the original bytes are kept."""
    dedupe: DedupeSpec | None = None
    """Duplicate removal across the job; absent = off."""

    @property
    def input_format(self) -> str:
        """txt, csv, tsv, jsonl or parquet."""
        return input_format(self.input)[0]

    @field_validator("keep_columns")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        for i, name in enumerate(value):
            if name in seen:
                raise ValueError(
                    f"{name!r} is listed twice (keep_columns[{seen[name]}] and "
                    f"keep_columns[{i}]) — remove one"
                )
            seen[name] = i
        return value


def kind_schema(schema: dict[str, Any]) -> None:
    """JSON Schema of the manifest: ``[[files]]`` is required (at least one) unless
    ``kind = "urllist"``, which requires ``[urllist]`` instead."""
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": "urllist"}}, "required": ["kind"]},
            "then": {"required": ["urllist"]},
            "else": {"required": ["files"], "properties": {"files": {"minItems": 1}}},
        }
    ]


def urllist_cross_check(kind: str, spec: UrllistSpec | None, files: int) -> list[tuple[str, str]]:
    """Errors (field path, message) between ``kind``, ``[urllist]`` and ``[[files]]``."""
    if kind == "files":
        errors = []
        if spec is not None:
            errors.append(
                ("urllist", 'given, but the manifest\'s kind is "files" — add kind = "urllist"')
            )
        if files == 0:
            errors.append(
                (
                    "files",
                    "is required — add at least 1 item, e.g. [[files]] path = "
                    '"data.tar.gz" sources.mirrors = ["https://..."] (or set kind = '
                    '"urllist" for a list of URLs)',
                )
            )
        return errors
    if spec is None:
        return [("urllist", 'is required for kind = "urllist" — add [urllist] input = "..."')]
    errors = []
    if spec.input_format == "txt":
        if spec.caption_column is not None:
            errors.append(
                ("urllist.caption_column", "a txt input has one URL per line and no columns")
            )
        if spec.keep_columns:
            errors.append(
                ("urllist.keep_columns", "a txt input has one URL per line and no columns")
            )
        return errors
    named = {"url_column": spec.url_column}
    if spec.caption_column is not None:
        if spec.caption_column == spec.url_column:
            errors.append(
                ("urllist.caption_column", f"{spec.caption_column!r} is also the url_column")
            )
        named["caption_column"] = spec.caption_column
    for i, column in enumerate(spec.keep_columns):
        for key, other in named.items():
            if column == other:
                errors.append(
                    (
                        f"urllist.keep_columns[{i}]",
                        f"{column!r} is the {key} — it is written already; remove it here",
                    )
                )
    return errors
