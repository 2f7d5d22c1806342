"""The torrent engine against real libtorrent sessions on 127.0.0.1."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.torrent_swarm import (
    AcademicTorrents,
    FileServer,
    Seeder,
    Tracker,
    infohash_of,
    loopback_settings,
    make_torrent,
    running_engine,
    write_files,
)

from acquired.sources.torrent import (
    InfoHash,
    Magnet,
    MetadataReceived,
    MetadataWaiting,
    SeedingDone,
    TorrentFailed,
    TorrentFile,
    TorrentFinished,
    TorrentProgress,
    TorrentRequest,
    TorrentStalled,
    TorrentUrl,
)
from acquired.sources.torrent.errors import (
    FileNotInTorrent,
    InfohashMismatch,
    TorrentFetchFailed,
    UnknownTorrent,
)

MB = 1 << 20


@pytest.fixture
def seeder() -> Iterator[Seeder]:
    s = Seeder()
    yield s
    s.close()


@pytest.fixture
def academic() -> Iterator[AcademicTorrents]:
    server = AcademicTorrents()
    yield server
    server.close()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_single_file_from_academic_torrents_via_tracker(
    tmp_path: Path, seeder: Seeder, academic: AcademicTorrents
) -> None:
    tracker = Tracker()
    try:
        data = write_files(tmp_path / "seed", {"train.tar": 3 * MB})["train.tar"]
        torrent = make_torrent(tmp_path / "seed" / "train.tar", trackers=(tracker.announce_url,))
        seeder.seed(torrent, tmp_path / "seed")
        ih = academic.publish(torrent)
        # The seeder is known to the tracker; the engine finds it only through the tracker.
        tracker.add_peer(ih, "127.0.0.1", seeder.port, seed=True)
        settings = loopback_settings(academic_torrents_url=academic.url)
        with running_engine(settings, tmp_path / "state") as (engine, events):
            final = tmp_path / "data" / "train.tar"
            engine.add(
                TorrentRequest(
                    "job/train",
                    InfoHash(ih),
                    tmp_path / "data",
                    files={"train.tar": final},
                    digests={"train.tar": {"sha256": sha256(data)}},
                )
            )
            done = events.wait_for(TorrentFinished)
            assert done.files == {"train.tar": final}
            assert done.digests["train.tar"]["sha256"] == sha256(data)
            assert final.read_bytes() == data
            assert not Path(str(final) + ".part").exists()
            assert any(p.done == p.total == len(data) for p in events.of(TorrentProgress))
            assert any(r.startswith("/announce") for r in tracker.requests)
            status = engine.status("job/train")
            assert status.done == status.total == len(data)
            assert status.state == "seeding"
        # The .torrent is cached in the state dir under its infohash.
        assert (tmp_path / "state" / "torrents" / f"{ih}.torrent").read_bytes() == torrent
        assert academic.requests == [f"/download/{ih}.torrent"]
    finally:
        tracker.close()


def test_multi_file_fetches_only_the_named_files(tmp_path: Path, seeder: Seeder) -> None:
    names = {f"set/part{i}.bin": (i + 1) * 200_000 + 1234 for i in range(5)}
    files = write_files(tmp_path / "seed", names)
    torrent = make_torrent(tmp_path / "seed" / "set", piece_size=32 * 1024)
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "set.torrent").write_bytes(torrent)
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
        wanted = {
            "part1.bin": tmp_path / "out" / "a" / "first.bin",  # without the torrent's folder
            "set/part3.bin": Path("b/third.bin"),  # relative: under save_dir
        }
        engine.add(
            TorrentRequest(
                "job/set",
                TorrentFile(tmp_path / "set.torrent"),
                tmp_path / "out",
                files=wanted,
                peers=(seeder.endpoint,),
            )
        )
        done = events.wait_for(TorrentFinished)
        assert done.files == {
            "part1.bin": tmp_path / "out" / "a" / "first.bin",
            "set/part3.bin": tmp_path / "out" / "b" / "third.bin",
        }
        assert (tmp_path / "out" / "a" / "first.bin").read_bytes() == files["set/part1.bin"]
        assert (tmp_path / "out" / "b" / "third.bin").read_bytes() == files["set/part3.bin"]
        # The other three files were never written where the torrent would put them.
        for i in (0, 2, 4):
            assert not (tmp_path / "out" / "set" / f"part{i}.bin").exists()
        status = engine.status("job/set")
        assert status.total == len(files["set/part1.bin"]) + len(files["set/part3.bin"])
        assert status.downloaded_this_session < sum(names.values())


def test_file_not_in_torrent_lists_the_contents(tmp_path: Path) -> None:
    write_files(tmp_path / "seed", {"set/a.bin": 1000, "set/b.bin": 2000})
    (tmp_path / "set.torrent").write_bytes(make_torrent(tmp_path / "seed" / "set"))
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, _):
        with pytest.raises(FileNotInTorrent) as err:
            engine.add(
                TorrentRequest(
                    "job/x",
                    TorrentFile(tmp_path / "set.torrent"),
                    tmp_path / "out",
                    files={"c.bin": Path("c.bin")},
                )
            )
        assert err.value.code == "torrent.file_not_in_torrent"
        assert "set/a.bin" in str(err.value) and "set/b.bin" in str(err.value)
        assert err.value.details["contains"] == ["set/a.bin", "set/b.bin"]
        assert engine.keys() == []


def test_infohash_whose_torrent_does_not_match_is_refused(
    tmp_path: Path, academic: AcademicTorrents
) -> None:
    write_files(tmp_path / "seed", {"a.bin": 1000, "b.bin": 1000})
    real = make_torrent(tmp_path / "seed" / "a.bin")
    other = make_torrent(tmp_path / "seed" / "b.bin")
    claimed = infohash_of(real)
    academic.publish(other, as_infohash=claimed)
    settings = loopback_settings(academic_torrents_url=academic.url)
    with running_engine(settings, tmp_path / "state") as (engine, _):
        with pytest.raises(InfohashMismatch) as err:
            engine.add(TorrentRequest("job/a", InfoHash(claimed), tmp_path / "out"))
        assert err.value.code == "torrent.infohash_mismatch"
        assert err.value.details["expected"] == claimed
        assert err.value.details["actual"] == infohash_of(other)
        assert claimed in str(err.value) and "refused" in str(err.value)
        assert engine.keys() == []
        # Nothing wrong is cached.
        assert not (tmp_path / "state" / "torrents" / f"{claimed}.torrent").exists()
        # An infohash the endpoint does not know is a fetch failure with the URL.
        with pytest.raises(TorrentFetchFailed, match="HTTP 404"):
            engine.add(TorrentRequest("job/b", InfoHash("0" * 40), tmp_path / "out"))


def test_web_seed_only_completion(tmp_path: Path) -> None:
    data = write_files(tmp_path / "mirror", {"big.bin": 2 * MB})["big.bin"]
    mirror = FileServer(tmp_path / "mirror")
    try:
        torrent = make_torrent(tmp_path / "mirror" / "big.bin")
        (tmp_path / "big.torrent").write_bytes(torrent)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            engine.add(
                TorrentRequest(
                    "job/big",
                    TorrentFile(tmp_path / "big.torrent"),
                    tmp_path / "out",
                    web_seeds=(mirror.url_for("big.bin"),),
                )
            )
            done = events.wait_for(TorrentFinished)
            assert done.files["big.bin"].read_bytes() == data
        assert mirror.bytes_sent >= len(data)
    finally:
        mirror.close()


def test_torrents_own_url_list_is_used(tmp_path: Path) -> None:
    data = write_files(tmp_path / "mirror", {"own.bin": MB})["own.bin"]
    mirror = FileServer(tmp_path / "mirror")
    try:
        torrent = make_torrent(
            tmp_path / "mirror" / "own.bin", web_seeds=(mirror.url_for("own.bin"),)
        )
        (tmp_path / "own.torrent").write_bytes(torrent)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            engine.add(
                TorrentRequest("job/own", TorrentFile(tmp_path / "own.torrent"), tmp_path / "out")
            )
            done = events.wait_for(TorrentFinished)
            assert done.files["own.bin"] == tmp_path / "out" / "own.bin"
            assert done.files["own.bin"].read_bytes() == data
    finally:
        mirror.close()


def test_no_peers_reports_a_stall_within_the_window(tmp_path: Path) -> None:
    write_files(tmp_path / "seed", {"lonely.bin": MB})
    (tmp_path / "l.torrent").write_bytes(make_torrent(tmp_path / "seed" / "lonely.bin"))
    settings = loopback_settings(stall_window=1.0)
    with running_engine(settings, tmp_path / "state") as (engine, events):
        engine.add(TorrentRequest("job/l", TorrentFile(tmp_path / "l.torrent"), tmp_path / "out"))
        stall = events.wait_for(TorrentStalled, timeout=15)
        assert stall.key == "job/l"
        assert stall.seconds_without_data >= 1.0
        assert stall.peers == 0
        assert engine.status("job/l").state == "stalled"
        assert not events.of(TorrentFinished)


def test_magnet_gets_metadata_from_a_peer(tmp_path: Path, seeder: Seeder) -> None:
    data = write_files(tmp_path / "seed", {"m.bin": MB})["m.bin"]
    torrent = make_torrent(tmp_path / "seed" / "m.bin")
    seeder.seed(torrent, tmp_path / "seed")
    magnet = f"magnet:?xt=urn:btih:{infohash_of(torrent)}&dn=m.bin"
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
        engine.add(
            TorrentRequest(
                "job/m",
                Magnet(magnet),
                tmp_path / "out",
                files={"m.bin": Path("final.bin")},
                peers=(seeder.endpoint,),
            )
        )
        got = events.wait_for(MetadataReceived)
        assert got.name == "m.bin" and got.total == len(data)
        done = events.wait_for(TorrentFinished)
        assert done.files == {"m.bin": tmp_path / "out" / "final.bin"}
        assert (tmp_path / "out" / "final.bin").read_bytes() == data
        assert not (tmp_path / "out" / "m.bin").exists()


def test_magnet_without_peers_times_out_with_a_clear_status(tmp_path: Path) -> None:
    settings = loopback_settings(metadata_timeout=1.5)
    magnet = "magnet:?xt=urn:btih:" + "ab" * 20
    with running_engine(settings, tmp_path / "state") as (engine, events):
        engine.add(TorrentRequest("job/mm", Magnet(magnet), tmp_path / "out"))
        waiting = events.wait_for(MetadataWaiting)
        assert waiting.key == "job/mm"
        failed = events.wait_for(TorrentFailed, timeout=15)
        assert failed.error.code == "torrent.metadata_timeout"
        assert "metadata" in str(failed.error)
        assert engine.status("job/mm").state == "failed"


def test_digest_mismatch_keeps_the_file_out_of_place(tmp_path: Path, seeder: Seeder) -> None:
    write_files(tmp_path / "seed", {"d.bin": 512 * 1024})
    torrent = make_torrent(tmp_path / "seed" / "d.bin")
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "d.torrent").write_bytes(torrent)
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
        engine.add(
            TorrentRequest(
                "job/d",
                TorrentFile(tmp_path / "d.torrent"),
                tmp_path / "out",
                peers=(seeder.endpoint,),
                digests={"d.bin": {"sha256": "0" * 64}},
            )
        )
        failed = events.wait_for(TorrentFailed)
        assert failed.error.code == "verify.digest_mismatch"
        assert failed.error.details["expected"] == "0" * 64
        assert not (tmp_path / "out" / "d.bin").exists()
        assert (tmp_path / "out" / "d.bin.part").exists()
        assert not events.of(TorrentFinished)


def test_seeding_stops_at_the_configured_time(tmp_path: Path, seeder: Seeder) -> None:
    write_files(tmp_path / "seed", {"s.bin": 256 * 1024})
    torrent = make_torrent(tmp_path / "seed" / "s.bin")
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "s.torrent").write_bytes(torrent)
    settings = loopback_settings(seed_time=0.5, seed_ratio=None)
    with running_engine(settings, tmp_path / "state") as (engine, events):
        engine.add(
            TorrentRequest(
                "job/s",
                TorrentFile(tmp_path / "s.torrent"),
                tmp_path / "out",
                peers=(seeder.endpoint,),
            )
        )
        events.wait_for(TorrentFinished)
        done = events.wait_for(SeedingDone)
        assert done.key == "job/s" and done.seconds >= 0.5
        assert engine.status("job/s").paused
        engine.remove("job/s")
        assert engine.keys() == []
        assert (tmp_path / "out" / "s.bin").exists()  # remove keeps the data
        with pytest.raises(UnknownTorrent):
            engine.status("job/s")


def test_restart_after_clean_stop_downloads_nothing_again(tmp_path: Path, seeder: Seeder) -> None:
    data = write_files(tmp_path / "seed", {"r.bin": MB})["r.bin"]
    torrent = make_torrent(tmp_path / "seed" / "r.bin")
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "r.torrent").write_bytes(torrent)
    request = TorrentRequest(
        "job/r", TorrentFile(tmp_path / "r.torrent"), tmp_path / "out", peers=(seeder.endpoint,)
    )
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
        engine.add(request)
        events.wait_for(TorrentFinished)
    assert any((tmp_path / "state" / "resume").iterdir())
    (tmp_path / "r.torrent").unlink()  # the resume data carries the metadata
    with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
        engine.add(request)
        done = events.wait_for(TorrentFinished)
        assert done.files["r.bin"].read_bytes() == data
        assert engine.status("job/r").downloaded_this_session == 0


def test_pause_and_resume(tmp_path: Path) -> None:
    seeder = Seeder(upload_rate_limit=400_000)
    try:
        data = write_files(tmp_path / "seed", {"p.bin": MB})["p.bin"]
        torrent = make_torrent(tmp_path / "seed" / "p.bin", piece_size=16 * 1024)
        seeder.seed(torrent, tmp_path / "seed")
        (tmp_path / "p.torrent").write_bytes(torrent)
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            engine.add(
                TorrentRequest(
                    "job/p",
                    TorrentFile(tmp_path / "p.torrent"),
                    tmp_path / "out",
                    peers=(seeder.endpoint,),
                )
            )
            events.wait_for(TorrentProgress, lambda e: e.done > 0)
            engine.pause("job/p")
            assert engine.status("job/p").paused
            engine.resume("job/p")
            engine.status("job/p")
            # A resumed torrent must find its peer again: give it the hint.
            done = events.wait_for(TorrentFinished, timeout=30)
            assert done.files["p.bin"].read_bytes() == data
    finally:
        seeder.close()


def test_url_source_fetches_the_torrent_over_http(tmp_path: Path, seeder: Seeder) -> None:
    data = write_files(tmp_path / "seed", {"u.bin": 300_000})["u.bin"]
    torrent = make_torrent(tmp_path / "seed" / "u.bin")
    seeder.seed(torrent, tmp_path / "seed")
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "u.torrent").write_bytes(torrent)
    server = FileServer(tmp_path / "files")
    try:
        with running_engine(loopback_settings(), tmp_path / "state") as (engine, events):
            engine.add(
                TorrentRequest(
                    "job/u",
                    TorrentUrl(server.url_for("u.torrent")),
                    tmp_path / "out",
                    peers=(seeder.endpoint,),
                )
            )
            assert events.wait_for(TorrentFinished).files["u.bin"].read_bytes() == data
    finally:
        server.close()
