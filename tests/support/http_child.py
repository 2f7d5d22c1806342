"""A download in a child process that a test can SIGKILL at any moment.

    python tests/support/http_child.py SPEC.json

SPEC names urls, dest, state (file), connections and option overrides. Every Checkpoint
is persisted the way the daemon does it: written to a temporary file, fsync'ed and
renamed over the state file, so a kill leaves either the old or the new state.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from acquired.sources.http import Checkpoint, FileRequest, HttpDownload, HttpOptions, Progress


def _persist(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    state_path = Path(spec["state"])
    progress_path = Path(spec["progress"]) if spec.get("progress") else None
    resume = json.loads(state_path.read_text()) if state_path.exists() else None

    def on_event(event: object) -> None:
        if isinstance(event, Checkpoint):
            _persist(state_path, event.state)
        elif isinstance(event, Progress) and progress_path is not None:
            progress_path.write_text(str(event.done))

    request = FileRequest(
        urls=spec["urls"],
        dest=Path(spec["dest"]),
        size=spec.get("size"),
        digests=spec.get("digests", {}),
        resume=resume,
    )
    options = HttpOptions(**spec.get("options", {}))
    HttpDownload(request, options, on_event).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
