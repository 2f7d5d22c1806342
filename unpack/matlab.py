"""A small reader for MATLAB MAT-file version 5 (what MATLAB writes by default up to
``-v7``, and what ``scipy.io.savemat`` writes), enough for the ImageNet devkit's
``data/meta.mat``: numeric, char, cell and struct arrays, compressed or not.

Format reference: MathWorks, "MAT-File Format" (matfile_format.pdf), chapter 1: a 128-byte
header, then data elements (8-byte tag: type and size, or a 4-byte "small element"),
``miCOMPRESSED`` elements holding zlib-compressed elements, ``miMATRIX`` elements holding
array flags, dimensions, name and the class-specific data. Values come back as Python
lists in MATLAB's column-major order; struct arrays as lists of dicts; char arrays as
``str`` (one row) or a list of ``str``. Sparse, object and function-handle arrays and
v7.3 (HDF5) files are not supported: :class:`MatFileError` says so.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

MI_INT8, MI_UINT8, MI_INT16, MI_UINT16, MI_INT32, MI_UINT32 = 1, 2, 3, 4, 5, 6
MI_SINGLE, MI_DOUBLE, MI_INT64, MI_UINT64 = 7, 9, 12, 13
MI_MATRIX, MI_COMPRESSED, MI_UTF8, MI_UTF16, MI_UTF32 = 14, 15, 16, 17, 18

MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5

_NUMERIC = {
    MI_INT8: "b",
    MI_UINT8: "B",
    MI_INT16: "h",
    MI_UINT16: "H",
    MI_INT32: "i",
    MI_UINT32: "I",
    MI_SINGLE: "f",
    MI_DOUBLE: "d",
    MI_INT64: "q",
    MI_UINT64: "Q",
}


class MatFileError(ValueError):
    """The file is not a MAT v5 file this reader understands."""


class _Reader:
    def __init__(self, data: bytes, endian: str) -> None:
        self.data = data
        self.pos = 0
        self.e = endian

    def at_end(self) -> bool:
        return self.pos + 8 > len(self.data)

    def element(self) -> tuple[int, bytes]:
        """The next data element: (type, payload)."""
        if self.pos + 8 > len(self.data):
            raise MatFileError("truncated data element")
        first, second = struct.unpack_from(self.e + "II", self.data, self.pos)
        if first >> 16:
            # Small data element: size in the upper half, data in the next 4 bytes.
            kind, size = first & 0xFFFF, first >> 16
            payload = self.data[self.pos + 4 : self.pos + 4 + size]
            self.pos += 8
            return kind, payload
        kind, size = first, second
        start = self.pos + 8
        if start + size > len(self.data):
            raise MatFileError("truncated data element")
        payload = self.data[start : start + size]
        self.pos = start + size
        if kind != MI_COMPRESSED:
            self.pos += (-size) % 8
        return kind, payload


def _numbers(kind: int, payload: bytes, endian: str) -> list[Any]:
    code = _NUMERIC.get(kind)
    if code is None:
        raise MatFileError(f"data type {kind} is not numeric")
    count = len(payload) // struct.calcsize(code)
    return list(struct.unpack_from(f"{endian}{count}{code}", payload))


def _chars(kind: int, payload: bytes, endian: str, dims: list[int]) -> str | list[str]:
    if kind == MI_UTF8 or kind in (MI_UINT8, MI_INT8):
        text_codes = [ord(c) for c in payload.decode("utf-8", errors="replace")]
    elif kind in (MI_UINT16, MI_UTF16, MI_INT16):
        text_codes = list(struct.unpack_from(f"{endian}{len(payload) // 2}H", payload))
    elif kind in (MI_UTF32, MI_UINT32, MI_INT32):
        text_codes = list(struct.unpack_from(f"{endian}{len(payload) // 4}I", payload))
    else:
        raise MatFileError(f"char data of type {kind}")
    rows = dims[0] if dims else 0
    cols = (len(text_codes) // rows) if rows else 0
    # Column-major: character (r, c) is at c * rows + r.
    lines = ["".join(chr(text_codes[c * rows + r]) for c in range(cols)) for r in range(rows)]
    return lines[0] if rows == 1 else lines


def _matrix(payload: bytes, endian: str) -> Any:
    if not payload:
        return []
    r = _Reader(payload, endian)
    _, flags_raw = r.element()
    flags = struct.unpack_from(endian + "I", flags_raw)[0]
    mx_class = flags & 0xFF
    complex_ = bool(flags & 0x0800)
    _, dims_raw = r.element()
    dims = [int(d) for d in _numbers(MI_INT32, dims_raw, endian)]
    r.element()  # array name (empty inside cells and structs)
    count = 1
    for d in dims:
        count *= d
    if mx_class == MX_CELL:
        return [_matrix(r.element()[1], endian) for _ in range(count)]
    if mx_class == MX_STRUCT:
        _, length_raw = r.element()
        length = struct.unpack_from(endian + "i", length_raw)[0]
        _, names_raw = r.element()
        if length <= 0:
            raise MatFileError("struct field names of length 0")
        names = [
            names_raw[i : i + length].split(b"\x00", 1)[0].decode("ascii", errors="replace")
            for i in range(0, len(names_raw), length)
        ]
        return [{name: _matrix(r.element()[1], endian) for name in names} for _ in range(count)]
    if mx_class == MX_CHAR:
        if count == 0:
            return ""
        kind, data = r.element()
        return _chars(kind, data, endian, dims)
    if mx_class in (MX_OBJECT, MX_SPARSE) or mx_class > 15:
        raise MatFileError(f"array class {mx_class} is not supported")
    kind, data = r.element()
    values = _numbers(kind, data, endian)
    if complex_:
        kind, data = r.element()
        imag = _numbers(kind, data, endian)
        values = [complex(a, b) for a, b in zip(values, imag, strict=False)]
    return values


def load(path: Path) -> dict[str, Any]:
    """The named variables of a MAT v5 file."""
    data = path.read_bytes()
    if len(data) < 128:
        raise MatFileError("too short for a MAT-file")
    if data[:10].startswith(b"\x89HDF") or b"MATLAB 7.3" in data[:116]:
        raise MatFileError("MAT v7.3 (HDF5) files are not supported; save with -v7")
    indicator = data[126:128]
    if indicator == b"IM":
        endian = "<"
    elif indicator == b"MI":
        endian = ">"
    else:
        raise MatFileError("not a MAT v5 file (no endian indicator)")
    out: dict[str, Any] = {}
    r = _Reader(data[128:], endian)
    while not r.at_end():
        kind, payload = r.element()
        if kind == MI_COMPRESSED:
            try:
                inner = zlib.decompress(payload)
            except zlib.error as exc:
                raise MatFileError(f"compressed element: {exc}") from None
            kind, payload = _Reader(inner, endian).element()
        if kind != MI_MATRIX:
            continue
        name = _name(payload, endian)
        out[name] = _matrix(payload, endian)
    return out


def _name(payload: bytes, endian: str) -> str:
    r = _Reader(payload, endian)
    r.element()
    r.element()
    _, raw = r.element()
    return raw.decode("ascii", errors="replace")


def _scalar(value: Any) -> Any:
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def imagenet_synsets(path: Path) -> list[str]:
    """WNIDs by ILSVRC2012_ID (index 0 is ID 1) from the devkit's ``meta.mat``: the
    ``synsets`` struct array's leaf entries (``num_children`` 0), as torchvision reads it."""
    try:
        synsets = load(path).get("synsets")
    except OSError as exc:
        raise MatFileError(str(exc)) from None
    if not isinstance(synsets, list) or not synsets or not isinstance(synsets[0], dict):
        raise MatFileError("no 'synsets' struct array")
    by_id: dict[int, str] = {}
    for entry in synsets:
        try:
            children = _scalar(entry["num_children"])
            ident = int(_scalar(entry["ILSVRC2012_ID"]))
            wnid = str(_scalar(entry["WNID"]))
        except (KeyError, TypeError, ValueError):
            raise MatFileError("'synsets' lacks ILSVRC2012_ID, WNID or num_children") from None
        if children == 0:
            by_id[ident] = wnid
    if sorted(by_id) != list(range(1, len(by_id) + 1)):
        raise MatFileError("leaf ILSVRC2012_IDs are not 1..N")
    return [by_id[i] for i in range(1, len(by_id) + 1)]
