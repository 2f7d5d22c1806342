"""Sizes, rates and durations shown to people: the CLI, the TUI, logs and messages."""

from __future__ import annotations

__all__ = ["format_bytes", "format_duration", "format_rate", "format_size"]


def format_size(n: float) -> str:
    """Format a byte count for people, in IEC units: ``format_size(1536) == '1.5 KiB'``."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    size = float(n)
    for unit in units:
        if abs(size) < 1024 or unit == units[-1]:
            if unit == "B":
                return f"{int(size)} B"
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} EiB"  # pragma: no cover - the loop always returns


def format_bytes(n: float | None) -> str:
    """Bytes with a decimal unit, as download tools show them: ``0 B``, ``999 B``,
    ``1.5 kB``, ``170.5 MB``."""
    value = float(n or 0)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 999.95:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


def format_rate(rate: float | None) -> str:
    """Bytes per second as ``45.2 MB/s``."""
    return f"{format_bytes(rate or 0)}/s"


def format_duration(seconds: float | None) -> str:
    """``45s``, ``3m07s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
