"""What the benchmarks share: sizes from the environment, digests, free ports, and nginx
in the foreground on loopback (a real server, so the server is not the bottleneck)."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

MiB = 1 << 20


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"64MiB"`` or a byte count (binary units)."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Nginx:
    """nginx in the foreground serving ``data_dir``: one server per entry of ``servers``
    (name -> (host, per-connection ``limit_rate`` or None))."""

    def __init__(
        self, work: Path, data_dir: Path, servers: dict[str, tuple[str, str | None]]
    ) -> None:
        self.prefix = work / "nginx"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.ports = {name: (host, free_port(host)) for name, (host, _) in servers.items()}
        self.log = self.prefix / "access.log"
        user = "user root;" if os.geteuid() == 0 else ""
        blocks = []
        for name, (host, port) in self.ports.items():
            limit = servers[name][1]
            rate = f"limit_rate {limit};" if limit else ""
            blocks.append(f"server {{ listen {host}:{port}; root {data_dir}; {rate} }}")
        temp = "\n".join(
            f"  {kind}_temp_path {self.prefix}/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        conf = f"""
{user}
worker_processes auto;
error_log {self.prefix}/error.log warn;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  log_format bench '$server_port $status $body_bytes_sent';
  access_log {self.log} bench;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
{temp}
  {" ".join(blocks)}
}}
"""
        self.conf = self.prefix / "nginx.conf"
        self.conf.write_text(conf)
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        host, port = next(iter(self.ports.values()))
        while time.monotonic() < deadline:
            try:
                socket.create_connection((host, port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise SystemExit(f"nginx did not start: {err}") from None
                time.sleep(0.05)
        raise SystemExit("nginx did not start listening")

    def url(self, name: str, file: str = "data.bin") -> str:
        host, port = self.ports[name]
        return f"http://{host}:{port}/{file}"

    def log_offset(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def served_since(self, offset: int) -> int:
        """Body bytes nginx sent since the log was at ``offset`` (finished requests)."""
        time.sleep(0.5)  # let nginx log the requests of killed clients
        total = 0
        with self.log.open() as f:
            f.seek(offset)
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[2].isdigit():
                    total += int(parts[2])
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
