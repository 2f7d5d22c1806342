"""Structured journald fields through the handler seam, and the local log file."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from acquired.daemon import logs
from acquired.daemon.logs import (
    AcquiredJournalHandler,
    follow_log_file,
    format_entry,
    journal_entry,
    read_log_file,
    setup_logging,
)


class Captured:
    """A journal ``send`` stand-in: the one seam, since the test host has no journald."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, message: str, **fields: Any) -> None:
        self.calls.append({"MESSAGE": message, **fields})


@pytest.fixture
def journal() -> Captured:
    captured = Captured()
    setup_logging("debug", journal_handler=AcquiredJournalHandler(sender_function=captured))
    yield captured
    setup_logging("info", journal=False)


def test_structured_fields_on_every_record(journal: Captured) -> None:
    log = logging.getLogger("acquired.daemon.service")
    log.info("fetching %s", "a.tar", extra={"job": "cifar10", "file": "a.tar", "source": "http"})
    log.warning("mirror dropped", extra={"job": "cifar10", "code": "http.too_slow"})
    log.debug("plain")
    assert [c["MESSAGE"] for c in journal.calls] == ["fetching a.tar", "mirror dropped", "plain"]
    first, second, third = journal.calls
    assert first["ACQUIRED_JOB"] == "cifar10"
    assert first["ACQUIRED_FILE"] == "a.tar"
    assert first["ACQUIRED_SOURCE"] == "http"
    assert "ACQUIRED_CODE" not in first
    assert second["ACQUIRED_CODE"] == "http.too_slow"
    assert not {"ACQUIRED_JOB", "ACQUIRED_FILE", "ACQUIRED_SOURCE", "ACQUIRED_CODE"} & set(third)
    # every record carries its CLOCK_MONOTONIC time, to order it against systemd's stamps
    stamps = [int(c["ACQUIRED_MONOTONIC_USEC"]) for c in journal.calls]
    assert stamps == sorted(stamps) and stamps[0] > 0
    for call in journal.calls:
        assert call["SYSLOG_IDENTIFIER"] == "acquired"
        assert call["LOGGER"] == "acquired.daemon.service"
        # journald refuses field names that are not upper case: send none
        assert all(k == k.upper() for k in call), sorted(call)


def test_priorities_follow_levels(journal: Captured) -> None:
    log = logging.getLogger("acquired.x")
    for level in (logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL):
        log.log(level, "m")
    assert [c["PRIORITY"] for c in journal.calls] == ["7", "6", "4", "3", "2"]


def test_exception_text_is_sent(journal: Captured) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("acquired").exception("failed", extra={"job": "j"})
    call = journal.calls[-1]
    assert call["MESSAGE"].startswith("failed\nTraceback")
    assert "RuntimeError: boom" in call["EXCEPTION_TEXT"]
    assert call["PRIORITY"] == "3"


def test_level_filters_records(journal: Captured) -> None:
    setup_logging("warning", journal_handler=AcquiredJournalHandler(sender_function=journal))
    logging.getLogger("acquired").info("hidden")
    logging.getLogger("acquired").warning("shown")
    assert [c["MESSAGE"] for c in journal.calls] == ["shown"]


def test_bad_level_is_refused() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        setup_logging("loud")


def test_journal_chosen_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    handlers = setup_logging("info")
    try:
        assert [type(h) for h in handlers] == [AcquiredJournalHandler]
    finally:
        setup_logging("info", journal=False)
    monkeypatch.delenv("JOURNAL_STREAM")
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    handlers = setup_logging("info")
    assert [type(h) for h in handlers] == [logging.StreamHandler]


def test_stderr_lines_carry_the_fields() -> None:
    stream = io.StringIO()
    setup_logging("info", journal=False, stream=stream)
    try:
        logging.getLogger("acquired").info("done", extra={"job": "j1", "file": "f"})
    finally:
        setup_logging("info", journal=False)
    assert stream.getvalue().rstrip().endswith("INFO done [job=j1 file=f]")


def test_local_log_file_round_trip(tmp_path: Path, journal: Captured) -> None:
    path = tmp_path / "state" / "acquired.log"
    setup_logging(
        "info", log_file=path, journal_handler=AcquiredJournalHandler(sender_function=journal)
    )
    log = logging.getLogger("acquired.daemon")
    log.info("job added", extra={"job": "a"})
    log.info("other", extra={"job": "b"})
    log.error("failed", extra={"job": "a", "file": "x.bin", "code": "verify.digest_mismatch"})
    for handler in logging.getLogger("acquired").handlers:
        handler.flush()
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["message"] for r in raw] == ["job added", "other", "failed"]
    assert raw[2]["code"] == "verify.digest_mismatch" and raw[2]["priority"] == 3
    only_a = read_log_file(path, job="a")
    assert [e["message"] for e in only_a] == ["job added", "failed"]
    assert [e["message"] for e in read_log_file(path, lines=1)] == ["failed"]
    line = format_entry(only_a[1])
    assert line.endswith("ERROR [a/x.bin verify.digest_mismatch] failed")
    # the journal got the same records
    assert len(journal.calls) == 3


def test_read_skips_torn_lines_and_reads_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / "acquired.log"
    path.with_name("acquired.log.1").write_text(
        json.dumps({"ts": 1, "level": "info", "message": "older", "job": "a"}) + "\n"
    )
    path.write_text(
        json.dumps({"ts": 2, "level": "info", "message": "newer", "job": "a"})
        + "\n{not json\n"
        + '{"ts": 3, "lev'
    )
    assert [e["message"] for e in read_log_file(path)] == ["older", "newer"]
    assert read_log_file(tmp_path / "missing.log") == []


def test_follow_sees_appends_and_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every rotation between two polls must still be on disk: 5 backups, ~3 rotations
    monkeypatch.setattr(logs, "LOG_FILE_BACKUPS", 5)
    path = tmp_path / "acquired.log"
    log = logging.getLogger("acquired.follow")
    setup_logging("info", journal=False, stream=io.StringIO())
    log.info("before following", extra={"job": "a"})
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=800, backupCount=5)
    handler.setFormatter(logs.JsonLineFormatter())
    logging.getLogger("acquired").addHandler(handler)
    log.info("written before follow starts", extra={"job": "a"})
    stop = threading.Event()
    seen: list[str] = []
    done = threading.Event()

    def reader() -> None:
        for entry in follow_log_file(path, job="a", poll=0.02, stop=stop.is_set):
            seen.append(entry["message"])
            if entry["message"] == "last":
                done.set()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        # handshake: the follower starts at the end of the file, so write until it sees one
        deadline = time.monotonic() + 30
        while "sync" not in seen and time.monotonic() < deadline:
            log.info("sync", extra={"job": "a"})
            time.sleep(0.05)
        for i in range(20):  # ~115 bytes each: rotates about 3 times
            log.info("line %d", i, extra={"job": "a" if i % 2 == 0 else "b"})
        log.info("last", extra={"job": "a"})
        assert done.wait(30), seen
    finally:
        stop.set()
        thread.join(10)
        logging.getLogger("acquired").removeHandler(handler)
        handler.close()
        setup_logging("info", journal=False)
    assert path.with_name("acquired.log.2").exists()
    seen = [m for m in seen if m != "sync"]
    assert seen == [f"line {i}" for i in range(0, 20, 2)] + ["last"]


def test_journal_entry_shape() -> None:
    raw = {
        "__REALTIME_TIMESTAMP": "1700000000000000",
        "PRIORITY": "4",
        "MESSAGE": [104, 105],
        "ACQUIRED_JOB": "cifar10",
        "ACQUIRED_CODE": "http.too_slow",
        "SYSLOG_IDENTIFIER": "acquired",
    }
    entry = journal_entry(raw)
    assert entry["message"] == "hi"
    assert entry["level"] == "warning"
    assert entry["job"] == "cifar10" and entry["code"] == "http.too_slow"
    assert entry["ts"] == 1_700_000_000.0


# ---------------------------------------------------------------- acquirectl logs


def _write_log(path: Path) -> None:
    setup_logging("info", journal=False, stream=io.StringIO(), log_file=path)
    try:
        log = logging.getLogger("acquired.daemon")
        log.info("job added", extra={"job": "a"})
        log.warning("mirror slow", extra={"job": "b", "source": "http"})
        log.error("failed", extra={"job": "a", "file": "x.bin", "code": "verify.digest_mismatch"})
    finally:
        setup_logging("info", journal=False)


def _logs(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "acquired.daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_acquirectl_logs_from_the_local_file(tmp_path: Path) -> None:
    path = tmp_path / "acquired.log"
    _write_log(path)
    out = _logs("logs", "--file", str(path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("INFO [a] job added")
    assert lines[1].endswith("WARNING [b] mirror slow")
    assert lines[2].endswith("ERROR [a/x.bin verify.digest_mismatch] failed")
    only_a = _logs("logs", "a", "--file", str(path), "--lines", "1").stdout.splitlines()
    assert len(only_a) == 1 and only_a[0].endswith("failed")
    raw = _logs("logs", "b", "--file", str(path), "--json").stdout
    as_json = [json.loads(line) for line in raw.splitlines()]
    assert [(e["job"], e["source"], e["message"]) for e in as_json] == [
        ("b", "http", "mirror slow")
    ]


def test_acquirectl_logs_falls_back_to_the_state_dir_log(tmp_path: Path) -> None:
    state = tmp_path / "state"
    _write_log(state / "acquired.log")
    config = tmp_path / "acquired.toml"
    config.write_text(f'state_dir = "{state}"\n')
    # no journalctl on PATH: the journal is not available, the local file is used
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    out = _logs("--config", str(config), "logs", "a", env=env)
    assert out.returncode == 0, out.stderr
    assert [line.rsplit("] ", 1)[1] for line in out.stdout.splitlines()] == ["job added", "failed"]
    # journal asked for explicitly but missing: a clear error with a hint
    out = _logs("--config", str(config), "logs", "--from", "journal", env=env)
    assert out.returncode == 1
    assert "journalctl is not installed" in out.stderr and "hint:" in out.stderr


def test_acquirectl_logs_without_any_log_explains(tmp_path: Path) -> None:
    config = tmp_path / "acquired.toml"
    config.write_text(f'state_dir = "{tmp_path / "nothing"}"\n')
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    out = _logs("--config", str(config), "logs", env=env)
    assert out.returncode == 1
    assert "no local log file" in out.stderr
    assert str(tmp_path / "nothing" / "acquired.log") in out.stderr


def test_acquirectl_logs_follow(tmp_path: Path) -> None:
    path = tmp_path / "acquired.log"
    _write_log(path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "acquired.daemon.cli", "logs", "a", "-f", "--file", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().endswith("job added\n")
        assert proc.stdout.readline().endswith("failed\n")
        handler = logging.FileHandler(path)
        handler.setFormatter(logs.JsonLineFormatter())
        log = logging.getLogger("acquired.follow-cli")
        log.addHandler(handler)
        try:
            log.warning("later for b", extra={"job": "b"})
            log.warning("later for a", extra={"job": "a"})
        finally:
            log.removeHandler(handler)
            handler.close()
        assert proc.stdout.readline().endswith("WARNING [a] later for a\n")
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code == 0


def test_follow_with_history_loses_nothing_written_in_between(tmp_path: Path) -> None:
    path = tmp_path / "acquired.log"
    _write_log(path)
    gen = follow_log_file(path, poll=0.01, history=2)
    try:
        # the history comes through the handle that is then followed: a line written
        # right after it was shown is the next one out
        assert [next(gen)["message"], next(gen)["message"]] == ["mirror slow", "failed"]
        with path.open("a") as handle:
            handle.write(json.dumps({"ts": 5, "level": "info", "message": "right after"}) + "\n")
        assert next(gen)["message"] == "right after"
    finally:
        gen.close()
    everything = follow_log_file(path, history=None)
    try:
        assert [next(everything)["message"] for _ in range(4)] == [
            "job added",
            "mirror slow",
            "failed",
            "right after",
        ]
    finally:
        everything.close()
