"""SIGKILL in the middle of a download: the restart keeps every verified piece."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.torrent_swarm import (
    Seeder,
    loopback_settings,
    make_torrent,
    running_engine,
    write_files,
)

from acquired.sources.torrent import TorrentFile, TorrentFinished, TorrentRequest

CHILD = Path(__file__).parent / "support" / "torrent_child.py"
SIZE = 4 << 20


def test_sigkill_mid_download_resumes_with_verified_pieces_kept(tmp_path: Path) -> None:
    seeder = Seeder(upload_rate_limit=1_000_000)
    try:
        data = write_files(tmp_path / "seed", {"k.bin": SIZE})["k.bin"]
        torrent = make_torrent(tmp_path / "seed" / "k.bin", piece_size=32 * 1024)
        seeder.seed(torrent, tmp_path / "seed")
        (tmp_path / "k.torrent").write_bytes(torrent)
        child = subprocess.Popen(
            [
                sys.executable,
                str(CHILD),
                str(tmp_path / "state"),
                str(tmp_path / "k.torrent"),
                str(tmp_path / "out"),
                str(seeder.port),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            done_at_save = 0
            last_done = 0
            deadline = time.monotonic() + 30
            # Kill once a resume file records a good part (a quarter) of the file.
            for line in child.stdout:
                word, *rest = line.split()
                if word == "progress":
                    last_done = int(rest[0])
                elif word == "resume" and last_done >= SIZE // 4:
                    done_at_save = last_done
                    break
                assert word != "finished", "the download finished before the kill"
                assert time.monotonic() < deadline, "no progress from the child"
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL
        assert 0 < done_at_save < SIZE
        part = tmp_path / "out" / "k.bin.part"
        assert part.exists()

        request = TorrentRequest(
            "job/kill",
            TorrentFile(tmp_path / "k.torrent"),
            tmp_path / "out",
            peers=(seeder.endpoint,),
        )
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            engine.add(request)
            done = events.wait_for(TorrentFinished, timeout=30)
            assert done.files["k.bin"].read_bytes() == data
            downloaded = engine.status("job/kill").downloaded_this_session
        # Pieces verified before the kill were not fetched again.
        assert downloaded <= SIZE - done_at_save + 64 * 1024
        assert downloaded < SIZE
    finally:
        seeder.close()
