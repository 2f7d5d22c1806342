"""The daemon's view: process_file() per completed file, finish_job() per job — an
ImageNet-like job end to end, a digest mismatch that extracts nothing, a completed file
dropped into a watched folder, restart after the archive was deleted."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from support import archives as A

from acquired.unpack import (
    Candidate,
    ChecksumFileStep,
    ImagenetValStep,
    ListingStep,
    UnpackStep,
    finish_job,
    match_completed,
    process_file,
)
from acquired.unpack.errors import CountMismatch, DigestMismatch, PathTraversal


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imagenet_like_job_end_to_end(tmp_path: Path) -> None:
    downloads = tmp_path / "job"
    downloads.mkdir()
    # Devkit: ground truth + synsets inside a tar.gz.
    inputs = A.imagenet_val(tmp_path / "src", images=120, classes=6)
    devkit = A.make_tar(
        downloads / "devkit.tar.gz",
        {
            "devkit/data/ground_truth.txt": (tmp_path / "src" / "ground_truth.txt").read_bytes(),
            "devkit/data/synsets.txt": (tmp_path / "src" / "synsets.txt").read_bytes(),
        },
        "gz",
    )
    val_files = {p.name: p.read_bytes() for p in sorted((tmp_path / "src" / "val").iterdir())}
    val = A.make_tar(downloads / "val.tar", val_files, dirs=False)
    inner = {f"n{i:08d}.tar": A.sample_tree(9, 10, 900, seed=i) for i in range(6)}
    train = A.make_nested_tar(downloads / "train.tar", inner)

    events: list[tuple[str, int, int]] = []

    def progress(step: str, done: int, total: int) -> None:
        events.append((step, done, total))

    for archive, step in (
        (devkit, UnpackStep(into=".")),
        (val, UnpackStep(format="tar", into="val", delete_archive=True)),
        (train, UnpackStep(into="train", nested=True)),
    ):
        out = process_file(
            archive,
            job_root=downloads,
            digests={"sha256": sha256(archive)},
            steps=[step],
            workers=2,
            progress=progress,
        )
        assert out.extractions[0].files > 0
    assert not val.exists() and devkit.exists()
    assert {e[0] for e in events} == {"verify", "extract"}

    sums = [f"{hashlib.md5(d).hexdigest()}  {n}" for n, d in inner["n00000002.tar"].items()]
    (downloads / "train" / "n00000002" / "MD5SUMS").write_text("\n".join(sums) + "\n")
    job = finish_job(
        downloads,
        checksums=[ChecksumFileStep("train/n00000002/MD5SUMS")],
        layouts=[
            ImagenetValStep(
                images="val",
                ground_truth="devkit/data/ground_truth.txt",
                synsets="devkit/data/synsets.txt",
                expected_images=120,
                expected_classes=6,
            )
        ],
        listings=[ListingStep(root="train", expect_files=6 * 9 + 1, expect_folders=6 + 6 * 3)],
        progress=progress,
    )
    assert job.checksums[0].files == 9
    expected = inputs["expected"]
    assert isinstance(expected, dict)
    for name, wnid in expected.items():
        assert (downloads / "val" / wnid / name).read_bytes() == val_files[name]
    assert job.listings[0].files == 55
    with pytest.raises(CountMismatch):
        finish_job(downloads, listings=[ListingStep(root="train", expect_files=1_281_167)])


def test_digest_mismatch_extracts_nothing(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", A.sample_tree(10))
    with pytest.raises(DigestMismatch) as info:
        process_file(
            archive, job_root=tmp_path, digests={"sha256": "0" * 64}, steps=[UnpackStep(into="out")]
        )
    assert info.value.details["expected"] == "0" * 64
    # Extraction ran into staging while the digest was computed; nothing was placed and
    # the staging folder is gone.
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not any("staging" in p.name for p in tmp_path.rglob("*"))
    assert archive.exists()


def test_damaged_download_reports_the_digest_not_the_damage(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar.gz", A.sample_tree(30, 1000, 9000), "gz")
    digest = sha256(archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DigestMismatch):
        process_file(
            archive, job_root=tmp_path, digests={"sha256": digest}, steps=[UnpackStep(into="o")]
        )
    assert not (tmp_path / "o").exists() or list((tmp_path / "o").iterdir()) == []


def test_completed_file_in_a_watched_folder(tmp_path: Path) -> None:
    # An external client finished the file in its own folder; the daemon matches it to
    # the job's file by name, size and digest, then processes it like its own download.
    original = A.make_zip(tmp_path / "cifar.zip", A.sample_tree(12, seed=5))
    watched = tmp_path / "watched"
    watched.mkdir()
    copy = Path(shutil.copy(original, watched / "cifar.zip"))
    digest = sha256(original)
    candidates = [
        Candidate("other/1", "cifar.zip", 5, {"sha256": "1" * 64}),
        Candidate("cifar/0", "cifar.zip", original.stat().st_size, {"sha256": digest}),
    ]
    match = match_completed(copy, candidates)
    assert match is not None and match.key == "cifar/0"
    out = process_file(
        copy,
        job_root=tmp_path / "job",
        digests=dict(match.digests),
        steps=[UnpackStep(into=".")],
    )
    assert out.digests["sha256"] == digest
    assert A.read_tree(tmp_path / "job") == A.sample_tree(12, seed=5)


def test_restart_after_the_archive_was_deleted(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar.gz", A.sample_tree(10), "gz")
    digests = {"sha256": sha256(archive)}
    steps = [UnpackStep(into="a"), UnpackStep(into="b", delete_archive=True)]
    first = process_file(archive, job_root=tmp_path, digests=digests, steps=steps)
    assert not archive.exists()
    assert [r.skipped for r in first.extractions] == [False, False]
    again = process_file(archive, job_root=tmp_path, digests=digests, steps=steps)
    assert [r.skipped for r in again.extractions] == [True, True]
    assert A.read_tree(tmp_path / "a") == A.read_tree(tmp_path / "b") == A.sample_tree(10)


def test_steps_stay_inside_the_job(tmp_path: Path) -> None:
    archive = A.make_tar(tmp_path / "d.tar", A.sample_tree(3))
    with pytest.raises(PathTraversal):
        process_file(
            archive, job_root=tmp_path / "job", digests={}, steps=[UnpackStep(into="../x")]
        )
