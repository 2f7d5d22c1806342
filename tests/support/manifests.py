"""Manifests for tests that run the daemon: TOML text from plain dicts."""

from __future__ import annotations

import json


def manifest(name: str, files: list[dict[str, object]], destination: str | None = None) -> str:
    """A manifest's TOML: a ``[[files]]`` table per dict (``mirrors`` is ``sources.mirrors``)."""
    lines = ["manifest_version = 1", f'name = "{name}"', f'destination = "{destination or name}"']
    for f in files:
        lines.append("\n[[files]]")
        for key, value in f.items():
            if key == "mirrors":
                lines.append(f"sources.mirrors = {json.dumps(value)}")
            else:
                lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
