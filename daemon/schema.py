"""The store's schema: ordered migrations (``PRAGMA user_version`` counts them) and the
key that tells whether a file's progress carries over to a replacing manifest."""

from __future__ import annotations

import json
from typing import Any

# Each entry moves the schema from version i to i + 1. Never edit a released entry:
# append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        manifest_json TEXT NOT NULL,
        manifest_digest TEXT NOT NULL,
        manifest_path TEXT NOT NULL,
        destination TEXT NOT NULL,
        warnings TEXT NOT NULL DEFAULT '[]',
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        path TEXT NOT NULL,
        size INTEGER,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        error TEXT,
        bytes_done INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0,
        source TEXT,
        digests TEXT,
        updated REAL NOT NULL,
        UNIQUE (job_id, idx)
    );
    CREATE INDEX files_by_job_state ON files (job_id, state);
    CREATE INDEX files_by_state ON files (state, not_before);
    CREATE TABLE checkpoints (
        file_id INTEGER PRIMARY KEY REFERENCES files(id) ON DELETE CASCADE,
        state TEXT NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        level TEXT NOT NULL,
        job_id TEXT,
        file_id INTEGER,
        code TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_by_job ON events (job_id, id);
    """,
    # 2: the source chosen for a file ({"source": "torrent"|"http"|"both", "reason": ...}),
    # kept so that a restart continues with the same source instead of probing again.
    """
    ALTER TABLE files ADD COLUMN plan TEXT;
    """,
    # 3: job-level steps (checksum files, layouts, listings) run once every file is done:
    # NULL (none), 'pending', 'running', 'done' or 'failed'; finish_error holds the error.
    """
    ALTER TABLE jobs ADD COLUMN finish TEXT;
    ALTER TABLE jobs ADD COLUMN finish_error TEXT;
    """,
    # 4: the manifest lives on disk (manifest_path, parsed once per job by the daemon);
    # the settings the daemon reads per job are columns, and the kind of job (files;
    # URL lists later). A file keeps only ``expect`` (its size and checksums, which must
    # match for its progress to carry over to a replacing manifest); ``complete`` is 0
    # while a job's file rows are still being put in, in chunks. After this step,
    # _after_v4 writes out any manifest missing on disk and fills ``expect``.
    """
    ALTER TABLE jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'files';
    ALTER TABLE jobs ADD COLUMN connections INTEGER;
    ALTER TABLE jobs ADD COLUMN bandwidth_limit INTEGER;
    UPDATE jobs SET connections = json_extract(manifest_json, '$.connections'),
        bandwidth_limit = json_extract(manifest_json, '$.bandwidth_limit');
    ALTER TABLE files ADD COLUMN expect TEXT;
    ALTER TABLE jobs ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;
    """,
    # 5: the copies of the manifest in the database go (every file's spec is in it).
    """
    ALTER TABLE jobs DROP COLUMN manifest_json;
    ALTER TABLE files DROP COLUMN spec;
    """,
    # 6: the queued files of a job in manifest order, so that finding the next files to
    # start reads only as many rows as it starts, not every queued file (sorted) each time.
    """
    CREATE INDEX files_queued ON files (job_id, idx) WHERE state = 'queued';
    """,
)

DIGEST_NAMES = ("sha256", "sha1", "md5", "blake2b", "sha512")


def expect_key(size: int | None, digests: dict[str, str]) -> str:
    """What must match for a file's progress to carry over to a replacing manifest."""
    return json.dumps([size, sorted((k, v.lower()) for k, v in digests.items())])


def spec_digests(spec: dict[str, Any]) -> dict[str, str]:
    """The checksums of a file spec as stored by schema 3 and before."""
    return {k: str(spec[k]) for k in DIGEST_NAMES if spec.get(k)}
