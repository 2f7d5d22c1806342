"""Sizes and rates as people write them, and the wording of validation errors.

Sizes (``parse_size``):

* a plain integer is a number of bytes: ``5000000``;
* a string is a number (decimals allowed) and an optional unit, case-insensitive except
  for the final ``B``, with optional spaces: ``"10G"``, ``"1.5 GiB"``, ``"512k"``;
* SI units are powers of 1000: ``K``/``KB`` = 10**3, ``M``/``MB`` = 10**6, ``G``/``GB``,
  ``T``/``TB``, ``P``/``PB``, ``E``/``EB``;
* IEC units are powers of 1024: ``Ki``/``KiB`` = 2**10, ``Mi``/``MiB``, ``Gi``/``GiB``,
  ``Ti``/``TiB``, ``Pi``/``PiB``, ``Ei``/``EiB``;
* a lower-case ``b`` is refused: ``"10Mb"`` usually means megabits, so it is not guessed.

Rates (``parse_rate``) are sizes per second and may end in ``/s``: ``"50M"``, ``"50MB/s"``.

The second half of this module turns pydantic's errors into messages in the file's own
terms (``files[2].sources.mirrors[0]: ...``); ``config`` and ``manifest`` share it.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import annotated_types
from pydantic import BaseModel, Strict, ValidationError
from pydantic_core import ErrorDetails

# Formatting for people is shared with the sources and unpack; imported here for the daemon.
from acquired.common.formatters import format_bytes, format_duration, format_rate, format_size

__all__ = [
    "SIZE_HELP",
    "Bool",
    "Float",
    "Int",
    "describe_error",
    "describe_validation_error",
    "format_bytes",
    "format_duration",
    "format_loc",
    "format_rate",
    "format_size",
    "model_at",
    "parse_host_port",
    "parse_rate",
    "parse_size",
    "suggest",
]

# Strict scalars: TOML and JSON carry real types, so `true` is not 1 and "8" is not 8.
Int = typing.Annotated[int, Strict()]
Float = typing.Annotated[float, Strict()]
Bool = typing.Annotated[bool, Strict()]

_PREFIXES = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_SIZE_RE = re.compile(
    r"^\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?P<prefix>[kKmMgGtTpPeE]?)(?P<iec>[iI]?)(?P<b>[bB]?)\s*$"
)

SIZE_HELP = (
    "write a number of bytes (5000000) or a number with a unit: K, M, G, T "
    "(powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. '10G' or '1.5GiB'"
)


def parse_size(value: object) -> int:
    """Return a size in bytes from an int or a string such as ``"10G"`` or ``"1.5GiB"``.

    Raises ``ValueError`` with a message that says how to write a size. Fractions of a
    byte are rounded down; negative sizes are refused.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size — {SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value} must not be negative — {SIZE_HELP}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value!r} is not a size — {SIZE_HELP}")
        if value < 0:
            raise ValueError(f"{value} must not be negative — {SIZE_HELP}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size — {SIZE_HELP}")
    match = _SIZE_RE.match(value)
    if match is None:
        stripped = value.strip()
        if stripped.startswith("-"):
            raise ValueError(f"{value!r} must not be negative — {SIZE_HELP}")
        raise ValueError(f"{value!r} is not a size — {SIZE_HELP}")
    prefix = match["prefix"].lower()
    iec = bool(match["iec"])
    if match["b"] == "b":
        raise ValueError(
            f"{value!r}: a lower-case 'b' would mean bits — write 'B' for bytes, "
            f"e.g. '{match['num']}{match['prefix'].upper()}{match['iec']}B'"
        )
    if iec and not prefix:
        raise ValueError(f"{value!r} is not a size — {SIZE_HELP}")
    try:
        number = Decimal(match["num"])
    except InvalidOperation:  # pragma: no cover - the regex only lets digits through
        raise ValueError(f"{value!r} is not a size — {SIZE_HELP}") from None
    base = 1024 if iec else 1000
    return int(number * (base ** _PREFIXES[prefix]))


def parse_rate(value: object) -> int:
    """Return a rate in bytes per second: a size, optionally followed by ``/s``."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.lower().endswith("/s"):
            value = stripped[:-2]
    return parse_size(value)


# --- validation messages --------------------------------------------------------------


_BARE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def format_loc(loc: Sequence[int | str]) -> str:
    """``("files", 2, "sources", "mirrors", 0)`` -> ``"files[2].sources.mirrors[0]"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        key = str(part)
        if not _BARE_KEY_RE.match(key):
            # Quoted as TOML quotes such keys, so an odd key ("", "a.b") reads unambiguously.
            key = json.dumps(key)
        out += f".{key}" if out else key
    return out


def suggest(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _unwrap_model(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X``, ``X | None``, ``list[X]`` or ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap_model(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, Sequence):
        for arg in typing.get_args(annotation):
            found = _unwrap_model(arg)
            if found is not None:
                return found
    return None


def model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class that holds the key at ``loc`` (list indices are skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        model = _unwrap_model(model.model_fields[part].annotation)
    return model


def _bounds(root: type[BaseModel], loc: Sequence[int | str]) -> tuple[float | None, float | None]:
    """The inclusive (ge, le) bounds declared on the field at ``loc``, if any."""
    if not loc or not isinstance(loc[-1], str):
        return None, None
    holder = model_at(root, loc[:-1])
    if holder is None or loc[-1] not in holder.model_fields:
        return None, None
    lower: float | None = None
    upper: float | None = None
    for meta in holder.model_fields[loc[-1]].metadata:
        if isinstance(meta, annotated_types.Ge):
            lower = typing.cast(float, meta.ge)
        elif isinstance(meta, annotated_types.Le):
            upper = typing.cast(float, meta.le)
    return lower, upper


def _show(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def describe_error(
    root: type[BaseModel], err: ErrorDetails, examples: dict[str, str] | None = None
) -> tuple[str, str]:
    """One pydantic error as (field path, message that says what to do).

    ``examples`` maps a key name to an example line shown when that key is missing.
    """
    loc = tuple(err["loc"])
    field = format_loc(loc)
    kind = err["type"]
    value = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        holder = model_at(root, loc[:-1])
        allowed = list(holder.model_fields) if holder else []
        hint = suggest(key, allowed)
        if not hint and allowed:
            hint = f" (known keys: {', '.join(allowed)})"
        return field, f"unknown key {key!r}{hint} — remove or rename it"
    if kind == "missing":
        example = (examples or {}).get(str(loc[-1])) if loc else None
        return field, f"is required — add it, e.g. {example}" if example else "is required — add it"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return field, str(ctx["error"])
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        lower, upper = _bounds(root, loc)
        if lower is not None and upper is not None:
            return field, f"{_show(value)} — must be between {lower} and {upper}"
        if kind == "greater_than_equal":
            return field, f"{_show(value)} — must be at least {ctx.get('ge')}"
        if kind == "greater_than":
            return field, f"{_show(value)} — must be more than {ctx.get('gt')}"
        if kind == "less_than_equal":
            return field, f"{_show(value)} — must be at most {ctx.get('le')}"
        return field, f"{_show(value)} — must be less than {ctx.get('lt')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return field, f"{_show(value)} — must be a whole number"
    if kind in ("float_type", "float_parsing"):
        return field, f"{_show(value)} — must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return field, f"{_show(value)} — must be true or false"
    if kind == "string_type":
        return field, f"{_show(value)} — must be a string (in quotes)"
    if kind in ("list_type", "tuple_type"):
        return field, f'{_show(value)} — must be a list, e.g. ["..."]'
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return field, f"{_show(value)} — must be a table of keys"
    if kind in ("path_type", "path_parsing"):
        return field, f"{_show(value)} — must be a path string (in quotes)"
    if kind == "literal_error":
        return field, f"{_show(value)} — must be one of {ctx.get('expected', '')}"
    if kind == "too_short":
        return field, f"must have at least {ctx.get('min_length')} item(s) — add one"
    if kind == "too_long":
        return field, f"must have at most {ctx.get('max_length')} item(s)"
    msg = err["msg"]
    return field, msg[:1].lower() + msg[1:]


def describe_validation_error(
    root: type[BaseModel], exc: ValidationError, examples: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Every error of ``exc`` as (field path, message), in the order pydantic found them."""
    return [describe_error(root, err, examples) for err in exc.errors()]


# --- host:port ------------------------------------------------------------------------

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


def parse_host_port(value: str, *, allow_port_zero: bool = False) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[v6]:port"`` for IPv6) and check both halves.

    Returns the host without brackets and the port. Raises ``ValueError`` with a message
    that shows the expected form.
    """
    import ipaddress

    form = "write it as host:port, e.g. '127.0.0.1:9469' or '[::1]:9469'"
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not host:port — {form}")
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not text[end + 1 :].startswith(":"):
            raise ValueError(f"{value!r} is not host:port — {form}")
        host, port_text = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: '{host}' is not an IPv6 address — {form}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} has no port — {form}")
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets — {form}")
        if not _HOSTNAME_RE.match(host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"{value!r}: '{host}' is not a host name or address") from None
    if not port_text.isdigit():
        raise ValueError(f"{value!r}: port {port_text!r} is not a number — {form}")
    port = int(port_text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} must be between {low} and 65535")
    return host, port
