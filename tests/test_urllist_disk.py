"""The disk guard of URL-list jobs on a real, small filesystem (a tmpfs mounted by the
test, root only): below the reserve no shard is claimed, and the job resumes by itself
when space comes back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support import urllist_jobs as uj
from support.daemon import DaemonProcess
from support.image_server import ImageServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to mount a small tmpfs as the data root"
)


def test_below_the_reserve_no_shard_is_claimed_then_it_resumes(
    tmp_path: Path, small_fs: Path
) -> None:
    ballast = small_fs / "ballast"
    ballast.write_bytes(b"\0" * (30 << 20))  # ~10 MiB left, the reserve is 20 MiB
    with ImageServer() as server:
        corpus = uj.build(server, good=20)
        data = small_fs / "data"
        with DaemonProcess(tmp_path, data_root=str(data), disk_reserve="20MiB") as d:
            name = uj.write_input(data / "dg", "txt", corpus)
            d.drop("dg.toml", uj.manifest("dg", name, fmt="txt"))
            job = d.wait_job("dg", "paused", timeout=60)
            assert "waiting for disk" in job["reason"]
            assert job["urllist"]["shards_done"] == 0
            assert server.hits("/img/0.png") == 0
            ballast.unlink()
            fig = d.wait_job("dg", "done", timeout=90)["urllist"]
    assert fig["samples_done"] == len(corpus.urls)
    rows = uj.read_output(data / "dg")
    assert sorted(rows) == list(range(len(corpus.urls)))
