"""The SQLite job store: schema, aggregation, checkpoints, crash safety."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from acquired.daemon.store import MIGRATIONS, NewFile, Store, StoreError


def make_job(store: Store, job_id: str = "j", n: int = 3, size: int | None = 100) -> None:
    store.add_job(
        job_id,
        manifest_digest="d" * 64,
        manifest_path="/x.toml",
        destination=job_id,
        warnings=["w"],
        files=[NewFile(i, f"f{i}", size) for i in range(n)],
    )


def test_schema_version_and_wal(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    assert store.schema_version == len(MIGRATIONS)
    store.close()
    # Reopening migrates nothing and keeps the data.
    store = Store(tmp_path / "a.db")
    assert store.schema_version == len(MIGRATIONS)
    assert (tmp_path / "a.db-wal").exists()


def test_migrates_a_version_1_database(tmp_path: Path) -> None:
    """A store written by the first schema gains the later columns and keeps its rows."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO jobs VALUES ('j', 1, '{}', 'd', '/m', 'j', '[]', 0, 0)")
    db.execute(
        "INSERT INTO files (job_id, idx, path, spec, state, updated)"
        " VALUES ('j', 0, 'a', '{}', 'queued', 0)"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    assert store.schema_version == len(MIGRATIONS)
    row = store.job_files("j")[0]
    assert row.plan is None
    store.set_plan(row.id, {"source": "torrent", "reason": "r"})
    assert store.get_file(row.id).plan == {"source": "torrent", "reason": "r"}


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "a.db").close()
    import sqlite3

    db = sqlite3.connect(tmp_path / "a.db")
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(tmp_path / "a.db")


def test_garbage_file_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "a.db").write_bytes(b"not a database" * 100)
    with pytest.raises(StoreError):
        Store(tmp_path / "a.db")


def test_totals_and_queue_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    make_job(store, "first", n=3)
    make_job(store, "second", n=2, size=None)
    t = store.job_totals("first")
    assert (t.files_total, t.bytes_total, t.counts) == (3, 300, {"queued": 3})
    assert store.job_totals("second").bytes_total is None  # a size is unknown
    rows = store.next_queued(0.0 + 1e12, limit=10)
    assert [(r.job_id, r.idx) for r in rows] == [
        ("first", 0),
        ("first", 1),
        ("first", 2),
        ("second", 0),
        ("second", 1),
    ]
    # The limit holds across jobs: the older job's files first.
    assert [(r.job_id, r.idx) for r in store.next_queued(1e12, limit=4)][-2:] == [
        ("first", 2),
        ("second", 0),
    ]
    store.set_state(rows[0].id, "fetching", attempts=1)
    store.set_state(rows[1].id, "queued", not_before=1e18)  # backing off
    nxt = store.next_queued(1e12, limit=10, skip=[rows[2].id])
    assert [r.id for r in nxt] == [rows[3].id, rows[4].id]
    assert store.next_wakeup() == 1e18
    assert store.state_counts() == {"fetching": 1, "queued": 4}


def test_checkpoint_and_requeue(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    make_job(store)
    row = store.job_files("j")[0]
    store.set_state(row.id, "fetching")
    store.save_checkpoint(row.id, {"ranges": [[0, 50]]}, 50)
    assert store.load_checkpoint(row.id) == {"ranges": [[0, 50]]}
    assert store.get_file(row.id).bytes_done == 50
    assert store.requeue_interrupted() == 1
    again = store.get_file(row.id)
    assert again.state == "queued" and again.bytes_done == 50
    store.delete_job("j")
    assert store.load_checkpoint(row.id) is None  # cascades
    with pytest.raises(KeyError):
        store.get_file(row.id)


def test_forget_fetch_clears_the_fetched_mark(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    make_job(store, n=1)
    fid = store.job_files("j")[0].id
    store.set_state(fid, "fetching", digests={})  # fetched, no digest to record
    assert store.get_file(fid).digests == {}
    store.forget_fetch(fid)
    assert store.get_file(fid).digests is None


def test_reason_and_disk_pauses_by_query(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    make_job(store, n=3)
    a, b, c = (r.id for r in store.job_files("j"))
    store.set_state(a, "paused", reason="paused by user")
    store.set_state(b, "paused", reason="waiting for disk: below the reserve")
    store.set_state(c, "queued", reason="waiting for disk: need 1 MB")
    assert store.first_reason("j", "paused") == "paused by user"
    assert store.first_reason("j", "failed") is None
    assert [r.id for r in store.paused_because("waiting for disk")] == [b]


def test_events_are_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "a.db")
    make_job(store)
    for i in range(1200):
        store.add_event("info", f"m{i}", job_id="j")
    events = store.recent_events(limit=5, job_id="j")
    assert [e["message"] for e in events] == [f"m{i}" for i in range(1195, 1200)]
    n = store._db.execute("SELECT COUNT(*) FROM events WHERE job_id = 'j'").fetchone()[0]
    assert n <= 600


def test_sigkill_mid_write_loses_no_committed_state(tmp_path: Path) -> None:
    """A writer killed with SIGKILL in a loop of checkpoints leaves a consistent store
    whose last checkpoint is one the writer committed."""
    db = tmp_path / "k.db"
    store = Store(db)
    make_job(store, n=1)
    fid = store.job_files("j")[0].id
    store.close()
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from acquired.daemon.store import Store
        s = Store(Path({str(db)!r}))
        i = 0
        while True:
            i += 1
            s.save_checkpoint({fid}, {{"n": i}}, i)
            if i == 200:
                print("go", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == b"go"
    os.kill(proc.pid, 9)
    proc.wait()
    store = Store(db)
    cp = store.load_checkpoint(fid)
    assert cp is not None and cp["n"] >= 200
    assert store.get_file(fid).bytes_done == cp["n"]  # written in one transaction


def test_migrates_a_database_of_the_previous_schema(tmp_path: Path) -> None:
    """A store written by schema 3 (manifests and file specs inside the database): the
    job settings become columns, a manifest missing on disk is written out, each file's
    size and checksums are kept for carrying progress over, and the rows stay."""
    import json
    import sqlite3

    from acquired.daemon.store import expect_key

    db = sqlite3.connect(tmp_path / "old.db")
    for script in MIGRATIONS[:3]:
        for statement in script.split(";"):
            if statement.strip():
                db.execute(statement)
    kept = tmp_path / "kept.toml"
    kept.write_text('name = "k"\n')
    manifest = {"name": "j", "connections": 4, "bandwidth_limit": 1000, "files": []}
    db.execute(
        "INSERT INTO jobs VALUES ('j', 1, ?, 'd', '/gone/j.toml', 'j', '[]', 0, 0, NULL, NULL)",
        (json.dumps(manifest),),
    )
    db.execute(
        "INSERT INTO jobs VALUES ('k', 2, '{}', 'd', ?, 'k', '[]', 0, 0, 'pending', NULL)",
        (str(kept),),
    )
    spec = {"path": "a", "size": 10, "sha256": "AB" * 32, "md5": None}
    db.execute(
        "INSERT INTO files (job_id, idx, path, size, spec, state, bytes_done, updated)"
        " VALUES ('j', 0, 'a', 10, ?, 'fetching', 5, 0)",
        (json.dumps(spec),),
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()

    store = Store(tmp_path / "old.db")
    assert store.schema_version == len(MIGRATIONS)
    job = store.get_job("j")
    assert job is not None
    assert (job.kind, job.connections, job.bandwidth_limit) == ("files", 4, 1000)
    assert json.loads(Path(job.manifest_path).read_text()) == manifest
    other = store.get_job("k")
    assert other is not None and other.manifest_path == str(kept) and other.finish == "pending"
    row = store.job_files("j")[0]
    assert (row.state, row.bytes_done) == ("fetching", 5)
    assert row.expect == expect_key(10, {"sha256": "ab" * 32})
    columns = {r[1] for r in store._db.execute("PRAGMA table_info(files)")}
    assert "spec" not in columns
