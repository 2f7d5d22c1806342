"""Long file names: a name that cannot take the ``.part`` suffix within NAME_MAX is refused
at intake naming the field; the longest accepted name is fetched and extracted for real
(the pipeline's own temporary names stay short)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from support.archives import tar_gz_bytes as tar_gz
from support.daemon import DaemonProcess
from support.http_server import HttpTestServer

LONGEST = "n" * 243 + ".tar.gz"  # 250 bytes: with ".part", exactly NAME_MAX
TOO_LONG = "n" * 244 + ".tar.gz"  # 251 bytes


def manifest(job: str, path: str, url: str, data: bytes) -> str:
    return f"""
manifest_version = 1
name = "{job}"
destination = "{job}"

[[files]]
path = "sub/{path}"
sha256 = "{hashlib.sha256(data).hexdigest()}"
sources.mirrors = ["{url}"]
unpack = [{{ format = "tar.gz", into = "." }}]
"""


def test_long_names_at_intake_and_through_fetch_and_unpack(tmp_path: Path) -> None:
    assert len(LONGEST.encode()) == 250 and len(TOO_LONG.encode()) == 251
    archive = tar_gz({"inside.txt": b"payload"})
    with HttpTestServer() as server:
        url = server.add("/a.tar.gz", archive)
        with DaemonProcess(tmp_path / "d") as d:
            d.drop("toolong.toml", manifest("toolong", TOO_LONG, url, archive))
            reason = d.inbox / "rejected" / "toolong.toml.error.txt"
            d.wait_for(reason.exists, 30, "the rejection")
            text = reason.read_text()
            assert "files[0].path" in text and "251 bytes" in text and "250" in text

            d.drop("longest.toml", manifest("longest", LONGEST, url, archive))
            d.wait_job("longest", "done")
            assert (d.data / "longest" / "sub" / LONGEST).read_bytes() == archive
            assert (d.data / "longest" / "inside.txt").read_bytes() == b"payload"
