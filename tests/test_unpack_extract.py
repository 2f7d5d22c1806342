"""extract(): every format, sniffing, nested archives, staging + marker + atomic placement,
merging into a shared folder, progress, cancel, corrupt archives."""

from __future__ import annotations

import shutil
import stat
import tarfile
import threading
from pathlib import Path

import pytest
from support import archives as A

from acquired.unpack import formats
from acquired.unpack.errors import (
    ArchiveMissing,
    CorruptArchive,
    ExtractCancelled,
    FormatMismatch,
    ReservedName,
    TargetConflict,
    UnknownFormat,
)
from acquired.unpack.extract import default_meta_dir, extract, read_marker

FILES = A.sample_tree(24, 0, 40_000, seed=3)


def leftovers(tmp_path: Path) -> list[str]:
    """Staging folders, journals and temporary files anywhere under tmp_path."""
    return sorted(
        str(p.relative_to(tmp_path))
        for p in tmp_path.rglob("*")
        if "staging" in p.name or p.name.endswith((".tmp", ".moving.json", ".inner"))
    )


@pytest.mark.parametrize("fmt", formats.CONTAINERS)
def test_every_container_format(tmp_path: Path, fmt: str) -> None:
    archive = A.make_archive(tmp_path / f"data.{fmt}", FILES, fmt)
    seen: list[tuple[int, int]] = []
    result = extract(archive, tmp_path / "out", progress=lambda d, t: seen.append((d, t)))
    assert A.read_tree(tmp_path / "out") == FILES
    assert result.format == fmt and not result.skipped
    assert result.files == len(FILES) and result.bytes == sum(map(len, FILES.values()))
    assert set(result.outputs) == {n.split("/")[0] for n in FILES}
    size = archive.stat().st_size
    assert seen[0] == (0, size) and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert leftovers(tmp_path) == []
    # The target holds the dataset only; bookkeeping lives beside it.
    assert not any(p.name.startswith(".acquired") for p in (tmp_path / "out").iterdir())
    assert result.marker.parent == default_meta_dir(tmp_path / "out")


@pytest.mark.parametrize("compression", formats.COMPRESSIONS)
def test_single_compressed_files(tmp_path: Path, compression: str) -> None:
    data = A.payload(1, 300_000) + bytes(200_000)
    archive = A.make_single(tmp_path / f"train-images-idx3-ubyte.{compression}", data, compression)
    result = extract(archive, tmp_path / "raw")
    assert result.outputs == ("train-images-idx3-ubyte",)
    assert (tmp_path / "raw" / "train-images-idx3-ubyte").read_bytes() == data


def test_content_decides_not_the_extension(tmp_path: Path) -> None:
    # A tar.gz named .zip, a zip named .bin, a bare tar without extension.
    a = A.make_tar(tmp_path / "misnamed.zip", FILES, "gz")
    b = A.make_zip(tmp_path / "blob.bin", FILES)
    c = A.make_tar(tmp_path / "noext", FILES)
    for archive, fmt in ((a, "tar.gz"), (b, "zip"), (c, "tar")):
        assert formats.sniff(archive) == fmt
        out = tmp_path / f"out-{archive.name}"
        assert extract(archive, out).format == fmt
        assert A.read_tree(out) == FILES


def test_zip_with_data_in_front_is_sniffed(tmp_path: Path) -> None:
    z = A.make_zip(tmp_path / "z.zip", FILES)
    sfx = tmp_path / "installer.exe"
    sfx.write_bytes(b"MZ" + bytes(5000) + z.read_bytes())
    assert formats.sniff(sfx) == "zip"


def test_declared_format_must_agree(tmp_path: Path) -> None:
    archive = A.make_zip(tmp_path / "data.tar.gz", FILES)
    with pytest.raises(FormatMismatch) as info:
        extract(archive, tmp_path / "out", "tar.gz")
    assert info.value.details["actual"] == "zip"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # Declaring gz for a tar.gz means: give me the .tar.
    tgz = A.make_tar(tmp_path / "x.tar.gz", FILES, "gz")
    out = extract(tgz, tmp_path / "tar-out", "gz")
    assert out.outputs == ("x.tar",)
    assert formats.sniff(tmp_path / "tar-out" / "x.tar") == "tar"


def test_unknown_format(tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("just text\n" * 100)
    with pytest.raises(UnknownFormat):
        extract(p, tmp_path / "out")
    with pytest.raises(UnknownFormat):
        extract(p, tmp_path / "out", "rar")


def test_format_names() -> None:
    assert formats.format_from_name("a.TAR.GZ") == "tar.gz"
    assert formats.format_from_name("a.tgz") == "tar.gz"
    assert formats.format_from_name("a.gz") == "gz"
    assert formats.format_from_name("a.txt") is None
    assert formats.strip_suffix("n01440764.tar") == "n01440764"
    assert formats.strip_suffix("x.tar.zst") == "x"
    assert formats.output_name("blob", "gz") == "blob.out"


# --- nested -----------------------------------------------------------------------------


def _inner(count: int, files: int = 6) -> dict[str, dict[str, bytes]]:
    out: dict[str, dict[str, bytes]] = {}
    for i in range(count):
        wnid = f"n{i:08d}"
        out[f"{wnid}.tar"] = {
            f"{wnid}_{j}.JPEG": A.payload(i * 1000 + j, 1000 + 97 * j) for j in range(files)
        }
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_nested_tar_of_tars(tmp_path: Path, workers: int) -> None:
    inner = _inner(7)
    outer = A.make_nested_tar(tmp_path / "train.tar", inner, extra={"README": b"read me\n"})
    seen: list[tuple[int, int]] = []
    result = extract(
        outer,
        tmp_path / "train",
        nested=True,
        workers=workers,
        progress=lambda d, t: seen.append((d, t)),
    )
    out = tmp_path / "train"
    assert sorted(p.name for p in out.iterdir()) == sorted(["README", *(n[:-4] for n in inner)])
    for name, files in inner.items():
        assert A.read_tree(out / name[:-4]) == files
    assert result.files == 1 + sum(len(f) for f in inner.values())
    size = outer.stat().st_size
    assert seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("inner_format", "outer_compression"),
    [("tar.gz", None), ("zip", None), ("tar.zst", None), ("tar", "gz"), ("tar.xz", "zst")],
)
def test_nested_mixed_formats(
    tmp_path: Path, inner_format: str, outer_compression: str | None
) -> None:
    suffix = {
        "tar": ".tar",
        "tar.gz": ".tgz",
        "zip": ".zip",
        "tar.zst": ".tar.zst",
        "tar.xz": ".txz",
    }
    inner = {f"cls{i}{suffix[inner_format]}": A.sample_tree(5, 0, 3000, seed=i) for i in range(5)}
    outer = A.make_nested_tar(
        tmp_path / "outer.tar",
        inner,
        inner_format=inner_format,
        outer_compression=outer_compression,
    )
    extract(outer, tmp_path / "out", nested=True, workers=2)
    for name, files in inner.items():
        assert A.read_tree(tmp_path / "out" / f"cls{name[3]}") == files
    assert leftovers(tmp_path) == []


def test_nested_false_keeps_inner_archives(tmp_path: Path) -> None:
    inner = _inner(2)
    outer = A.make_nested_tar(tmp_path / "train.tar", inner)
    extract(outer, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(inner)


def test_nested_inner_that_is_not_an_archive(tmp_path: Path) -> None:
    outer = A.write_tar_members(
        tmp_path / "o.tar", [(A._file_info("fake.tar", 100), A.payload(1, 100))]
    )
    with pytest.raises(CorruptArchive, match="not one"):
        extract(outer, tmp_path / "out", nested=True, workers=2)
    assert not (tmp_path / "out" / "fake").exists()
    assert leftovers(tmp_path) == []


# --- markers, redo, placement -------------------------------------------------------------


def test_finished_step_is_not_redone(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    first = extract(archive, tmp_path / "out", digest="sha256:aa")
    victim = tmp_path / "out" / sorted(FILES)[0]
    mtime = victim.stat().st_mtime_ns
    second = extract(archive, tmp_path / "out", digest="sha256:aa")
    assert second.skipped and second.outputs == first.outputs and second.files == first.files
    assert victim.stat().st_mtime_ns == mtime
    marker = read_marker(first.marker)
    assert marker is not None and marker["identity"] == "sha256:aa"


def test_new_digest_replaces_previous_extraction(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", {"old/a.txt": b"old", "keep.txt": b"1"})
    extract(archive, tmp_path / "out", digest="sha256:01")
    (tmp_path / "out" / "user.txt").write_text("mine")
    A.make_tar(archive, {"new/b.txt": b"new", "keep.txt": b"2"})
    result = extract(archive, tmp_path / "out", digest="sha256:02")
    assert not result.skipped
    assert A.read_tree(tmp_path / "out") == {
        "new/b.txt": b"new",
        "keep.txt": b"2",
        "user.txt": b"mine",
    }


def test_deleted_output_is_redone(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    extract(archive, tmp_path / "out", digest="sha256:aa")
    shutil.rmtree(tmp_path / "out" / "a")
    assert not extract(archive, tmp_path / "out", digest="sha256:aa").skipped
    assert A.read_tree(tmp_path / "out") == FILES


def test_delete_archive_only_after_marker(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    extract(archive, tmp_path / "out", digest="sha256:aa", delete_archive=True)
    assert not archive.exists()
    # Rerun (e.g. the daemon restarted): the marker answers, the archive is not needed.
    assert extract(archive, tmp_path / "out", digest="sha256:aa", delete_archive=True).skipped
    with pytest.raises(ArchiveMissing):
        extract(archive, tmp_path / "elsewhere", digest="sha256:aa")


def test_archives_merge_into_a_shared_folder(tmp_path: Path) -> None:
    part1 = A.make_tar(tmp_path / "part1.tar", {"images/a/1.jpg": b"1", "images/b/2.jpg": b"2"})
    part2 = A.make_tar(
        tmp_path / "part2.tar.gz", {"images/a/3.jpg": b"3", "labels.csv": b"x"}, "gz"
    )
    extract(part1, tmp_path / "ds")
    r2 = extract(part2, tmp_path / "ds")
    assert A.read_tree(tmp_path / "ds") == {
        "images/a/1.jpg": b"1",
        "images/b/2.jpg": b"2",
        "images/a/3.jpg": b"3",
        "labels.csv": b"x",
    }
    assert sorted(r2.outputs) == ["images/a/3.jpg", "labels.csv"]
    # A new version of part2 takes back exactly what part2 placed.
    A.make_tar(part2, {"images/a/4.jpg": b"4"}, "gz")
    extract(part2, tmp_path / "ds", digest="sha256:other")
    assert A.read_tree(tmp_path / "ds") == {
        "images/a/1.jpg": b"1",
        "images/b/2.jpg": b"2",
        "images/a/4.jpg": b"4",
    }


def test_conflict_with_existing_files_moves_nothing(tmp_path: Path) -> None:
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "f0001.bin").write_bytes(b"user data")
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    with pytest.raises(TargetConflict) as info:
        extract(archive, tmp_path / "out")
    assert info.value.details["paths"] == ["a/f0001.bin"]
    assert A.read_tree(tmp_path / "out") == {"a/f0001.bin": b"user data"}
    assert leftovers(tmp_path) == []


def test_crash_during_placement_is_undone(tmp_path: Path) -> None:
    # The state a SIGKILL between the moves and the marker leaves: a journal, some
    # outputs in place, no marker. The rerun removes them and extracts again.
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    result = extract(archive, tmp_path / "out")
    marker = read_marker(result.marker)
    assert marker is not None
    journal = result.marker.with_name("d.tar.moving.json")
    journal.write_text(result.marker.read_text())
    result.marker.unlink()
    shutil.rmtree(tmp_path / "out" / "c")  # only part of the moves had happened
    again = extract(archive, tmp_path / "out")
    assert not again.skipped and A.read_tree(tmp_path / "out") == FILES
    assert not journal.exists()


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", {".acquired-staging-x/f": b"1"})
    with pytest.raises(ReservedName):
        extract(archive, tmp_path / "out")


def test_modes_and_times(tmp_path: Path) -> None:
    extract(A.setuid_tar(tmp_path / "s.tar"), tmp_path / "out")
    st = (tmp_path / "out" / "tool.sh").stat()
    assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | 0o022)
    assert st.st_mode & 0o700 == 0o700
    assert int(st.st_mtime) == A.MTIME


def test_explicit_meta_dir(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", FILES)
    result = extract(archive, tmp_path / "out", meta_dir=tmp_path / "state" / "job1")
    assert result.marker == tmp_path / "state" / "job1" / "d.tar.json"
    assert extract(archive, tmp_path / "out", meta_dir=tmp_path / "state" / "job1").skipped


# --- cancel, corrupt archives -------------------------------------------------------------


def test_cancel_removes_partial_output(tmp_path: Path) -> None:
    # The flag is looked at every 64 entries: the first 63 files are written to staging
    # before the extraction notices, and must be gone afterwards.
    archive = A.make_tar(tmp_path / "d.tar", A.sample_tree(400, 0, 2000))
    ev = threading.Event()
    ev.set()
    with pytest.raises(ExtractCancelled):
        extract(archive, tmp_path / "out", cancel=ev)
    assert list((tmp_path / "out").iterdir()) == []
    assert leftovers(tmp_path) == []


def test_cancel_nested_parallel(tmp_path: Path) -> None:
    outer = A.make_nested_tar(tmp_path / "t.tar", _inner(12, 40))
    ev = threading.Event()
    ev.set()
    with pytest.raises(ExtractCancelled):
        extract(outer, tmp_path / "out", nested=True, workers=2, cancel=ev)
    assert list((tmp_path / "out").iterdir()) == []
    assert leftovers(tmp_path) == []


def _truncate(path: Path, keep: int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    return path


@pytest.mark.parametrize("fmt", ["tar", "tar.gz", "tar.xz", "tar.zst", "zip"])
def test_truncated_archives_are_corrupt(tmp_path: Path, fmt: str) -> None:
    files = A.sample_tree(10, 5000, 20000)
    archive = A.make_archive(tmp_path / f"d.{fmt}", files, fmt)
    _truncate(archive, archive.stat().st_size * 2 // 3)
    with pytest.raises(CorruptArchive):
        extract(archive, tmp_path / "out", fmt)
    assert list((tmp_path / "out").iterdir()) == []


def test_tar_cut_at_a_header_boundary_is_corrupt(tmp_path: Path) -> None:
    # tarfile alone stops quietly here: the archive would look complete.
    files = {f"f{i}": bytes(512) for i in range(6)}
    archive = A.make_tar(tmp_path / "d.tar", files, dirs=False)
    with tarfile.open(archive) as tf:
        cut = tf.getmembers()[3].offset
    _truncate(archive, cut)
    with pytest.raises(CorruptArchive, match="end-of-archive"):
        extract(archive, tmp_path / "out")


def test_garbage_inside_tar_is_corrupt(tmp_path: Path) -> None:
    files = {f"f{i}": bytes(512) for i in range(6)}
    archive = A.make_tar(tmp_path / "d.tar", files, dirs=False)
    with tarfile.open(archive) as tf:
        at = tf.getmembers()[3].offset
    data = bytearray(archive.read_bytes())
    data[at : at + 512] = b"\xff" * 512
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchive):
        extract(archive, tmp_path / "out")


def test_corrupt_gzip_payload(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar.gz", A.sample_tree(10, 5000, 20000), "gz")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchive):
        extract(archive, tmp_path / "out")


def test_a_file_of_zeros_is_not_an_empty_tar(tmp_path: Path) -> None:
    # Zeros decompress to what looks like tar's end-of-archive blocks; extracting them
    # as an empty archive would report success with nothing there.
    archive = A.make_single(tmp_path / "disk.img.zst", bytes(3 << 20), "zst")
    result = extract(archive, tmp_path / "out")
    assert result.format == "zst"
    assert (tmp_path / "out" / "disk.img").stat().st_size == 3 << 20


def test_an_empty_archive_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(CorruptArchive, match="no entries"):
        extract(empty, tmp_path / "out", "tar")


def test_parallel_steps_into_one_folder(tmp_path: Path) -> None:
    # Two files of a job extracted at the same time into the same folder, both holding
    # images/: placements take turns, the folders merge.
    parts = [
        A.make_tar(tmp_path / f"p{i}.tar", {f"images/{i}/{j}.jpg": b"%d" % j for j in range(300)})
        for i in range(4)
    ]
    errors: list[BaseException] = []

    def run(p: Path) -> None:
        try:
            extract(p, tmp_path / "ds")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert len(A.read_tree(tmp_path / "ds")) == 1200
