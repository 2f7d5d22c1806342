"""Where acquirectl finds its daemon, and the record a daemon leaves so it can be found.

A daemon started by hand (``make run`` in some folder, or ``acquired --config FILE``)
writes ``daemon-<hash>.json`` (its socket, pid, configuration and log file) into the
per-user runtime folder — ``$XDG_RUNTIME_DIR/acquired/``, or ``/run/acquired/`` for root
without one — and removes it when it stops. A daemon under systemd writes none: its
socket is the system service's.

``acquirectl`` looks, in this order: ``--socket``, ``$ACQUIRED_SOCKET``, ``--config``
(each of these alone, when given), else the system service's socket, the recorded
daemons, and ``./var/run/acquired.sock``; the first that answers wins. When none does,
the error names every place tried and what was found there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acquired.daemon.config import Config
from acquired.daemon.control import DaemonNotRunning, request

SYSTEM_CONFIG = Path("/etc/acquired/acquired.toml")
SYSTEM_SOCKET = Path("/run/acquired/acquired.sock")
ROOT_RECORDS = Path("/run/acquired")
RECORD_PREFIX = "daemon-"


def record_dirs() -> list[Path]:
    """Folders that may hold records, the caller's own first."""
    dirs = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        dirs.append(Path(xdg) / "acquired")
    if ROOT_RECORDS not in dirs:
        dirs.append(ROOT_RECORDS)
    return dirs


def own_record_dir() -> Path | None:
    """Where this process records a daemon: the user's runtime folder, /run/acquired
    for root without one, else nowhere."""
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        return Path(xdg) / "acquired"
    if os.geteuid() == 0:
        return ROOT_RECORDS
    return None


def record_path(directory: Path, socket: Path) -> Path:
    """The record of the daemon listening on ``socket``."""
    digest = hashlib.sha256(str(socket).encode()).hexdigest()[:16]
    return directory / f"{RECORD_PREFIX}{digest}.json"


def write_record(config: Config, config_path: Path | None) -> Path | None:
    """Record this daemon for acquirectl; returns the record's path (None: not recorded)."""
    directory = own_record_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _prune(directory)
        path = record_path(directory, config.socket_path)
        tmp = path.with_suffix(".tmp")
        record = {
            "socket": str(config.socket_path),
            "pid": os.getpid(),
            "config": str(config_path.absolute()) if config_path else None,
            "cwd": os.getcwd(),
            "state_dir": str(config.state_dir),
            "log_file": str(config.state_dir / "acquired.log"),
        }
        tmp.write_text(json.dumps(record, indent=1) + "\n")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def _prune(directory: Path) -> None:
    """Remove records left by daemons that were killed (their pid is gone)."""
    for path in directory.glob(f"{RECORD_PREFIX}*.json"):
        try:
            pid = int(json.loads(path.read_text()).get("pid"))
            os.kill(pid, 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
        except (OSError, ValueError, TypeError, AttributeError):
            continue


def remove_record(path: Path | None) -> None:
    """Remove this daemon's record (at stop)."""
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def read_records() -> list[dict[str, Any]]:
    """Every readable record, the caller's own folder first."""
    out = []
    for directory in record_dirs():
        try:
            names = sorted(directory.glob(f"{RECORD_PREFIX}*.json"))
        except OSError:
            continue
        for path in names:
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(record, dict) and isinstance(record.get("socket"), str):
                record["record"] = str(path)
                out.append(record)
    return out


@dataclass
class Candidate:
    """A place a daemon may listen, and how it was found."""

    socket: Path
    why: str
    log_file: Path | None = None


def _system_socket() -> Path:
    if SYSTEM_CONFIG.is_file():
        with contextlib.suppress(Exception):
            return Config.load(SYSTEM_CONFIG).socket_path
    return SYSTEM_SOCKET


def candidates(socket: str | None, config: Path | None) -> tuple[list[Candidate], bool]:
    """Places to try in order, and whether they were named explicitly (then only they)."""
    if socket is not None:
        return [Candidate(Path(socket), "--socket")], True
    env = os.environ.get("ACQUIRED_SOCKET")
    if env:
        return [Candidate(Path(env), "$ACQUIRED_SOCKET")], True
    if config is not None:
        loaded = Config.load(config)
        return [
            Candidate(loaded.socket_path, f"--config {config}", loaded.state_dir / "acquired.log")
        ], True
    found = [Candidate(_system_socket(), "the system service")]
    for record in read_records():
        log = record.get("log_file")
        found.append(
            Candidate(
                Path(record["socket"]),
                f"recorded in {record['record']}",
                Path(log) if isinstance(log, str) else None,
            )
        )
    local = Config.load(None)
    found.append(Candidate(local.socket_path, "./var/run", local.state_dir / "acquired.log"))
    unique: list[Candidate] = []
    for c in found:
        if all(c.socket != u.socket for u in unique):
            unique.append(c)
    return unique, False


def _probe(path: Path) -> str | None:
    """None when a daemon answers on ``path``, else what was found there."""
    if not os.path.lexists(path):
        return "no socket"
    try:
        request(path, {"cmd": "ping"}, timeout=3.0)
    except DaemonNotRunning as exc:
        return "no permission" if "permission" in str(exc) else "nobody answers"
    except Exception as exc:
        return f"no answer ({exc})"
    return None


def find_daemon(socket: str | None, config: Path | None) -> Candidate:
    """The first place where a daemon answers; :class:`DaemonNotRunning` naming every
    place tried otherwise."""
    places, explicit = candidates(socket, config)
    if explicit:
        return places[0]
    tried = []
    for place in places:
        problem = _probe(place.socket)
        if problem is None:
            return place
        tried.append(f"{place.socket} ({place.why}: {problem})")
    raise DaemonNotRunning(
        "acquired is not running; tried " + "; ".join(tried),
        tried=[str(p.socket) for p in places],
    )
