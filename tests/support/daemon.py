"""Run the real ``acquired`` as a subprocess with a temporary configuration.

with DaemonProcess(tmp_path, http={"connections_per_file": 1}) as d:
    d.drop("job.toml", text)
    d.wait_job("job", "done")
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acquired.daemon.control import request


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, values: dict[str, Any]) -> None:
    top = {k: v for k, v in values.items() if not isinstance(v, dict)}
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]
    for section, table in values.items():
        if isinstance(table, dict):
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")


class DaemonProcess:
    """The daemon in a subprocess; everything it writes lives under ``root``."""

    def __init__(self, root: Path, env: dict[str, str] | None = None, **config: Any) -> None:
        self.root = root
        self.data = root / "data"
        self.inbox = root / "inbox"
        self.state = root / "state"
        self.run_dir = root / "run"
        self.socket = self.run_dir / "acquired.sock"
        self.config_path = root / "acquired.toml"
        self.log_path = root / "daemon.log"
        values: dict[str, Any] = {
            "data_root": str(self.data),
            "inbox": str(self.inbox),
            "state_dir": str(self.state),
            "runtime_dir": str(self.run_dir),
            "log_level": "debug",
            "disk_reserve": 0,
            # The torrent session stays on loopback: no DHT, no UPnP, any free port.
            "torrent": {
                "listen_port": 0,
                "listen_interfaces": ["127.0.0.1"],
                "dht": False,
                "upnp": False,
                "natpmp": False,
                "lsd": False,
            },
        }
        for key, value in config.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key].update(value)
            else:
                values[key] = value
        self.config = values
        self.env = {**os.environ, **(env or {})}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            self.env.pop(name, None)
        self.env.update(env or {})
        # A daemon started by hand records its socket in the runtime folder: keep that
        # record inside the test's folder, never in the machine's /run.
        self.env.setdefault("XDG_RUNTIME_DIR", str(root / "xdg"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> DaemonProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        write_config(self.config_path, self.config)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "acquired.daemon.main", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.root,
        )
        log.close()
        self.wait_for(lambda: self._pingable(), timeout, "the daemon to answer on its socket")
        return self

    def _pingable(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.proc.returncode}:\n{self.log()}")
        try:
            request(self.socket, {"cmd": "ping"}, timeout=2)
        except Exception:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def call(self, payload: dict[str, Any]) -> Any:
        return request(self.socket, payload)

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call({"cmd": "status"})
        return result

    def job(self, job_id: str) -> dict[str, Any] | None:
        for job in self.status()["jobs"]:
            if job["id"] == job_id:
                return dict(job)
        return None

    def ctl(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run the real acquirectl against this daemon."""
        return subprocess.run(
            [sys.executable, "-m", "acquired.daemon.cli", "--socket", str(self.socket), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
            check=check,
        )

    def drop(self, name: str, text: str) -> Path:
        """Put a manifest into the inbox the way a careful operator does: write it
        elsewhere, then move it in."""
        self.inbox.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{name}.tmp"
        tmp.write_text(text)
        target = self.inbox / name
        os.replace(tmp, target)
        return target

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n--- daemon log:\n{self.log()}")
            time.sleep(0.05)

    def wait_job(self, job_id: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            job = self.job(job_id)
            if job and job["state"] == "failed" and state != "failed":
                show = self.call({"cmd": "show", "job": job_id})
                raise AssertionError(f"job {job_id} failed: {json.dumps(show, indent=1)}")
            return job if job and job["state"] == state else None

        result: dict[str, Any] = self.wait_for(check, timeout, f"job {job_id} to be {state}")
        return result

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
