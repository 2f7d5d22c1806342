"""acquired under a real systemd (Debian's, as PID 1 of a systemd-nspawn container).

The tests run in file order and share one container: install, start, acquire a file,
read the journal, reload, stop, resume an interrupted job, and the watchdog. Each test
asserts what an operator would see through systemctl, journalctl and acquirectl.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from nspawn_harness import REPO, Container

UNIT = "acquired.service"
SOCKET = "/run/acquired/acquired.sock"
WWW_PORT = 8080
SMALL = os.urandom(2 * 1024 * 1024 + 123)
BIG = os.urandom(12 * 1024 * 1024)
BIG_RATE = 192 * 1024  # bytes/s per connection: the download takes long enough to stop it


def _manifest(name: str, filename: str, data: bytes) -> str:
    return (
        "manifest_version = 1\n"
        f'name = "{name}"\n'
        f'destination = "{name}"\n\n'
        "[[files]]\n"
        f'path = "{filename}"\n'
        f"size = {len(data)}\n"
        f'sha256 = "{hashlib.sha256(data).hexdigest()}"\n'
        f'sources.mirrors = ["http://127.0.0.1:{WWW_PORT}/{filename}"]\n'
    )


@pytest.fixture(scope="module")
def ct(container: Container) -> Container:
    """The container with acquired installed by its own install script, an operator user
    in the group acquired, and an HTTP mirror serving the test files."""
    venv = str(container.binds[0])
    container.run(
        ["bash", f"{REPO}/systemd/install.sh", "--venv", venv, "--skip-pip"], timeout=120
    ).check()
    # an operator: not root, member of the service's group
    container.run(["useradd", "--create-home", "-G", "acquired", "alice"]).check()
    container.put(SMALL, "/srv/www/small.bin")
    container.put(BIG, "/srv/www/big.bin")
    container.run(
        [
            "systemd-run",
            "--unit=acq-www",
            "--property=Type=exec",
            f"{venv}/bin/python",
            f"{REPO}/tests/system/serve.py",
            "--port",
            str(WWW_PORT),
            "--dir",
            "/srv/www",
            "--rate",
            f"/big.bin={BIG_RATE}",
        ]
    ).check()
    container.wait("the mirror to listen", lambda: _www_lines(container, "listening"), 30)
    return container


def _www_lines(ct: Container, key: str) -> list[Any]:
    out = ct.run(["journalctl", "--no-pager", "-o", "cat", "-u", "acq-www"]).stdout
    found = []
    for line in out.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            if key in item:
                found.append(item[key])
    return found


def _as_operator(ct: Container, command: str, *, stdin: str | None = None) -> Any:
    """Run a shell command as the operator with umask 077 (the strictest one)."""
    return ct.run(
        ["runuser", "-u", "alice", "--", "sh", "-c", f"umask 077; {command}"], input=stdin
    )


def _acquirectl(ct: Container, *args: str) -> Any:
    return _as_operator(ct, shlex.join(["acquirectl", "--socket", SOCKET, *args]))


def _show(ct: Container, job: str) -> dict[str, Any] | None:
    res = _acquirectl(ct, "show", job, "--json")
    return json.loads(res.stdout) if res.returncode == 0 else None


def _job_state(ct: Container, job: str) -> str | None:
    shown = _show(ct, job)
    return shown["state"] if shown else None


def _monotonic_usec(ct: Container, unit: str, prop: str) -> int:
    return int(ct.prop(unit, prop) or 0)


def test_unit_installed_and_verified(ct: Container) -> None:
    verify = ct.run(["systemd-analyze", "verify", UNIT])
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify
    security = ct.run(["systemd-analyze", "security", "--offline=true", UNIT])
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", security.stdout)
    assert match, security.stdout[-2000:]
    print(f"systemd-analyze security --offline=true: {match.group(1)} {match.group(2)}")
    assert float(match.group(1)) <= 2.0
    passwd = ct.run(["getent", "passwd", "acquired"]).check().stdout
    assert "/usr/sbin/nologin" in passwd
    # the inbox: setgid, group-writable, group acquired, with the default ACL
    stat = ct.run(["stat", "-c", "%a %U %G", "/srv/acquired/inbox"]).check().stdout.split()
    assert stat == ["2770", "acquired", "acquired"]
    venv = str(ct.binds[0])
    acl = ct.run(
        [
            f"{venv}/bin/python",
            "-c",
            "import os; print(len(os.getxattr('/srv/acquired/inbox', 'system.posix_acl_default')))",
        ]
    ).check()
    assert int(acl.stdout) > 4
    assert ct.run(["test", "-f", "/etc/acquired/acquired.toml"]).returncode == 0
    # a second install keeps an edited configuration
    ct.run(["sh", "-c", "echo '# edited' >> /etc/acquired/acquired.toml"]).check()
    ct.run(
        ["bash", f"{REPO}/systemd/install.sh", "--venv", venv, "--skip-pip"], timeout=120
    ).check()
    assert "# edited" in ct.run(["cat", "/etc/acquired/acquired.toml"]).check().stdout
    assert ct.run(["test", "-f", "/etc/acquired/acquired.toml.dist"]).returncode == 0
    ct.systemctl("enable", UNIT).check()


def test_sandbox_allows_libtorrent_and_extraction(ct: Container) -> None:
    """The unit as installed, with only ExecStart replaced by a probe: libtorrent and
    acquired.unpack work under its hardening (MemoryDenyWriteExecute, the system call
    filter, the address families, PrivateUsers ...)."""
    venv = str(ct.binds[0])
    dropin = "/etc/systemd/system/acquired.service.d/test-probe.conf"
    # Copied in (with the test helpers it imports, laid out as in tests/) rather than run
    # from the checkout: the unit's PrivateTmp hides a checkout under /tmp, as CI's may be.
    tests = Path(__file__).resolve().parents[1]
    copy = "/usr/local/lib/acquired-probe"
    probe_path = f"{copy}/system/sandbox_probe.py"
    ct.put((tests / "system" / "sandbox_probe.py").read_text(), probe_path)
    for helper in sorted((tests / "support").glob("*.py")):
        ct.put(helper.read_text(), f"{copy}/support/{helper.name}")
    ct.put(
        f"[Service]\nExecStart=\nExecStart={venv}/bin/python {probe_path}\nRestart=no\n",
        dropin,
    )
    ct.systemctl("daemon-reload").check()
    try:
        started = ct.systemctl("start", UNIT, timeout=120)
        out = ct.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
        probe = [line for line in out.splitlines() if line.startswith("probe:")]
        assert started.returncode == 0, out[-3000:]
        ct.wait("the probe to exit", lambda: ct.prop(UNIT, "ActiveState") == "inactive", 60)
        assert ct.prop(UNIT, "Result") == "success", out[-3000:]
        assert any(line.startswith("probe: libtorrent ok") for line in probe), out[-3000:]
        assert any(line.startswith("probe: extract ok") for line in probe), out[-3000:]
    finally:
        ct.run(["rm", "-f", dropin]).check()
        ct.systemctl("daemon-reload").check()
        ct.systemctl("reset-failed", UNIT)


def test_start_becomes_active_only_after_ready(ct: Container) -> None:
    ct.systemctl("start", "--no-block", UNIT).check()
    seen: list[str] = []

    def settled() -> str | None:
        state = ct.systemctl("is-active", UNIT).stdout.strip()
        if not seen or seen[-1] != state:
            seen.append(state)
        if state == "active":
            # at the first moment systemd calls it active, the control socket answers
            ping = _acquirectl(ct, "status", "--json")
            assert ping.returncode == 0, (seen, ping)
            return state
        assert state != "failed", ct.run(["journalctl", "-u", UNIT, "--no-pager"]).stdout
        return None

    ct.wait("acquired to become active", settled, timeout=60, interval=0.05)
    assert "activating" in seen, seen
    start = _monotonic_usec(ct, UNIT, "ExecMainStartTimestampMonotonic")
    active = _monotonic_usec(ct, UNIT, "ActiveEnterTimestampMonotonic")
    ready_lines = [
        e for e in ct.journal(f"_SYSTEMD_UNIT={UNIT}") if " ready: " in str(e.get("MESSAGE"))
    ]
    assert ready_lines, "the daemon logged no 'ready' line"
    logged = int(ready_lines[-1]["ACQUIRED_MONOTONIC_USEC"])
    # the daemon logs "ready" after the store, control socket and inbox watcher are up
    # and just before READY=1: systemd called it active only after that
    assert start < logged <= active, (start, logged, active)
    assert ct.prop(UNIT, "WatchdogUSec") == "30s"
    assert ct.prop(UNIT, "Type") == "notify"


def test_watchdog_pings_and_status(ct: Container) -> None:
    first = _monotonic_usec(ct, UNIT, "WatchdogTimestampMonotonic")
    ct.wait(
        "a newer WATCHDOG=1",
        lambda: _monotonic_usec(ct, UNIT, "WatchdogTimestampMonotonic") > first,
        timeout=40,
    )
    status = ct.wait(
        "a STATUS= line",
        lambda: ct.prop(UNIT, "StatusText"),
        timeout=20,
    )
    assert re.fullmatch(r"\d+ active · .+/s · \d+ done · \d+ failed", status), status


def test_manifest_dropped_by_operator_is_acquired(ct: Container) -> None:
    text = _manifest("small", "small.bin", SMALL)
    drop = _as_operator(ct, "cat > /srv/acquired/inbox/small.toml", stdin=text)
    assert drop.returncode == 0, drop
    ct.wait("job small done", lambda: _job_state(ct, "small") == "done", timeout=90)
    digest = ct.run(["sha256sum", "/srv/acquired/data/small/small.bin"]).check().stdout.split()[0]
    assert digest == hashlib.sha256(SMALL).hexdigest()
    # readable by the group acquired (UMask=0027), not by others
    mode = ct.run(["stat", "-c", "%a %G", "/srv/acquired/data/small/small.bin"]).check().stdout
    assert mode.split() == ["640", "acquired"]
    # the operator's view, with the socket found from /etc/acquired/acquired.toml
    status = _as_operator(ct, "cd ~ && acquirectl status")
    assert status.returncode == 0, status
    assert re.search(r"^small\s+done\s+1/1\s", status.stdout, re.M), status.stdout
    top = _as_operator(ct, "cd ~ && acquirectl top")
    assert top.returncode == 0, top
    pid = ct.prop(UNIT, "MainPID")
    assert top.stdout.startswith(f"acquired 0.1.0 · pid {pid} · up "), top.stdout
    assert "0 active · 0 B/s · 1 done · 0 failed" in top.stdout


def test_journal_has_structured_lines(ct: Container) -> None:
    by_unit = ct.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).check().stdout
    assert "ready" in by_unit
    assert "small" in by_unit
    entries = ct.journal("ACQUIRED_JOB=small")
    assert entries, "journalctl ACQUIRED_JOB=small found nothing"
    assert {e.get("_SYSTEMD_UNIT") for e in entries} == {UNIT}
    assert all(e.get("SYSLOG_IDENTIFIER") == "acquired" for e in entries)
    assert any("done" in str(e.get("MESSAGE")) for e in entries), [e["MESSAGE"] for e in entries]
    assert ct.journal("ACQUIRED_JOB=no-such-job") == []
    # and acquirectl logs reads the same through journalctl (as root: the journal is
    # readable by root and the groups adm/systemd-journal)
    logs = ct.run(["acquirectl", "--socket", SOCKET, "logs", "small", "--lines", "50"]).check()
    assert "small" in logs.stdout and "done" in logs.stdout, logs.stdout
    assert "[small" in logs.stdout
    # an operator who may not read the journal gets the daemon's local log instead
    mine = _as_operator(ct, "cd ~ && acquirectl logs small --json")
    assert mine.returncode == 0, mine
    entries = [json.loads(line) for line in mine.stdout.splitlines()]
    assert entries and all(e["job"] == "small" for e in entries)
    assert any("done" in e["message"] for e in entries)
    # (the journal really is closed to her: that is why the file was used)
    assert _as_operator(ct, "journalctl -q -n 1 SYSLOG_IDENTIFIER=acquired").stdout == ""


def test_reload(ct: Container) -> None:
    pid = ct.prop(UNIT, "MainPID")
    ct.systemctl("reload", UNIT).check()
    ct.wait(
        "'configuration reloaded' in the journal",
        lambda: (
            "configuration reloaded"
            in ct.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
        ),
        timeout=30,
    )
    ct.wait(
        "active after reload",
        lambda: ct.systemctl("is-active", UNIT).stdout.strip() == "active",
        timeout=30,
    )
    assert ct.prop(UNIT, "MainPID") == pid
    assert ct.prop(UNIT, "NRestarts") == "0"


def test_stop_is_clean(ct: Container) -> None:
    ct.systemctl("stop", UNIT, timeout=120).check()
    assert ct.prop(UNIT, "ActiveState") == "inactive"
    assert ct.prop(UNIT, "Result") == "success"
    assert ct.prop(UNIT, "ExecMainStatus") == "0"


def test_interrupted_job_resumes_after_restart(ct: Container) -> None:
    ct.systemctl("start", UNIT).check()
    drop = _as_operator(
        ct, "cat > /srv/acquired/inbox/big.toml", stdin=_manifest("big", "big.bin", BIG)
    )
    assert drop.returncode == 0, drop

    def progressed() -> int:
        shown = _show(ct, "big")
        done = shown["files"][0]["bytes_done"] if shown else 0
        return done if done >= len(BIG) // 5 else 0

    ct.wait("a fifth of big.bin", progressed, timeout=120)
    ct.systemctl("stop", UNIT, timeout=120).check()
    assert ct.prop(UNIT, "Result") == "success"
    part = ct.run(["stat", "-c", "%s", "/srv/acquired/data/big/big.bin.part"])
    assert part.returncode == 0, "no .part file left after the stop"
    requests_before = len(_www_lines(ct, "request"))
    ct.systemctl("start", UNIT).check()
    ct.wait("job big done", lambda: _job_state(ct, "big") == "done", timeout=180)
    digest = ct.run(["sha256sum", "/srv/acquired/data/big/big.bin"]).check().stdout.split()[0]
    assert digest == hashlib.sha256(BIG).hexdigest()
    after = [r for r in _www_lines(ct, "request")[requests_before:] if r["method"] == "GET"]
    assert after, "no request after the restart"
    # resumed, not restarted: no request after the restart starts from byte 0
    assert all(r["range"] and not r["range"].startswith("bytes=0-") for r in after), after
    served = _www_lines(ct, "served")[-1]["/big.bin"]
    assert served < 1.6 * len(BIG), served
    journal = ct.run(["journalctl", "-u", UNIT, "-o", "cat", "--no-pager"]).stdout
    assert "resuming 1 file(s) interrupted by the last stop" in journal


def test_hung_scheduler_is_restarted_by_the_watchdog(ct: Container) -> None:
    ct.put(
        "[Service]\nWatchdogSec=3s\nEnvironment=ACQUIRED_TEST_FAULTS=1\n",
        "/etc/systemd/system/acquired.service.d/test-watchdog.conf",
    )
    ct.systemctl("daemon-reload").check()
    ct.systemctl("restart", UNIT).check()
    pid = ct.prop(UNIT, "MainPID")
    restarts = int(ct.prop(UNIT, "NRestarts"))
    since = _monotonic_usec(ct, UNIT, "ActiveEnterTimestampMonotonic")
    # the state thread blocks forever: no reply, so do not wait for one
    hang = (
        "import socket; s = socket.socket(socket.AF_UNIX); "
        f's.connect({SOCKET!r}); s.sendall(b\'{{"cmd": "test-hang"}}\\n\')'
    )
    venv = str(ct.binds[0])
    ct.run([f"{venv}/bin/python", "-c", hang]).check()
    ct.wait(
        "a restart by the watchdog",
        lambda: (
            int(ct.prop(UNIT, "NRestarts")) > restarts
            and ct.systemctl("is-active", UNIT).stdout.strip() == "active"
        ),
        timeout=60,
    )
    assert ct.prop(UNIT, "MainPID") != pid
    pid1 = ct.run(["journalctl", "_PID=1", "-o", "cat", "--no-pager"]).stdout
    assert f"{UNIT}: Watchdog timeout" in pid1
    assert _monotonic_usec(ct, UNIT, "ActiveEnterTimestampMonotonic") > since
    ct.run(["rm", "/etc/systemd/system/acquired.service.d/test-watchdog.conf"]).check()
    ct.systemctl("daemon-reload").check()
    ct.systemctl("stop", UNIT, timeout=120).check()
