"""Snapshots of a folder tree, to assert that nothing was written outside a destination."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry below ``root`` (itself included): kind and content (file digest, link
    target) — links are recorded, never followed."""
    out: dict[str, tuple[str, str]] = {}
    root = Path(root)
    if not os.path.lexists(root):
        return out
    stack = [root]
    while stack:
        path = stack.pop()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            out[rel] = ("dir", "")
            stack.extend(path.iterdir())
        elif path.is_file():
            out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
        else:
            out[rel] = ("other", "")
    return out
