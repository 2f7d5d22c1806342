"""Layouts: ImageNet validation sorted into class folders (devkit ground truth + meta.mat
or a synset list, LOC_val_solution.csv, per-image labels); framework cache placement for
Keras and torchvision; listings with count checks."""

from __future__ import annotations

import base64
import hashlib
import os
import zlib
from pathlib import Path

import pytest
from support import archives as A

from acquired.unpack import layout, matlab
from acquired.unpack.errors import (
    CountMismatch,
    FrameworkCheckFailed,
    ImageMissing,
    LayoutInputInvalid,
    PlacementConflict,
    UnknownDataset,
)
from acquired.unpack.extract import extract
from acquired.unpack.layout import (
    ExpectedCounts,
    FrameworkCache,
    check_counts,
    place_for_framework,
    sort_imagenet_val,
    write_listing,
)

# A devkit-like meta.mat written by scipy.io.savemat (compressed and not): 4 leaf synsets
# whose ILSVRC2012_IDs 1..4 are NOT in sorted WNID order (as in the real devkit), and 2
# inner nodes (num_children > 0) that must be skipped.
META_MAT = {
    "compressed": (
        "eNrzdQzxcXRSMNUzUPB1DNFNy8xJVQjISSxJyy/KtVIoyC/OrNBRcC5KTSxJTVHIz7NSCE4sUfDLL1MwMlQwNLIy"
        "NrIyslQwMjAyYyADMHr68gOppYwMDBVz3k67m3XIQOT4Ygt7CeHW2Deb+ieEbL+l3fo26ZBEcvPbTSWmWxh93Sc/"
        "rGm2PSB3xd1g48WrEYHS+rwypyyflvud+8k+SY1hQR2rQ2hd61THXXpT9B+rppom5rhJPvP5s75hW9d/Lmm7vXv3"
        "37stcPPeB0e1HxV++1+b9k4WPM12qPCMGdOX6kesgpL9Qj7TG3nTpzYnvXOd0SIYzuFf42Rr9NH5jEMwS/WD/fNX"
        "XfPXTC4yDbGJ/bzvCbvkvkmHzY1qvH+K3OLY6Xc+tLBWvrIyK2rerSwvMa0z+u2zDsubt5f8L+DnN7Fb/16plPuz"
        "fj3z4V/Mwn8VS6y2W/+y8Ku/HfA/99+a/4pfX7v9Uu6oWn5xf/KK/2b11/5P+KUr/Hdhdfruu7K1Msvrr8PUref9"
        "Is5tGbtjcf8em1Dd/i+GT1vOB/0r5L9/reLl5xPPr5koOaY8lD/041Vj6atqw3797Jrs3vO/b9oc/Z44+977tuId"
        "htbyZq8sZta+OV288unEff9PHqk2f6Cy7LWN67nO/NYZj47IRzv6MP856m80/8vfnKr/Ys8nfvwZwTAjq3IeANyC"
        "7Ho="
    ),
    "plain": (
        "eNrtVt1KwzAU7sbcD6JM8MLLPIBKkk637sbNeeFgE1HRy1G7uAa6dDTRbW/gA/igPoLNWrXWwjApeLMDh3BO+b6T"
        "c74DzbB7N+ieg5NjCIbdu6Mn6hFw7dniyQ+mbTDzOV0cgl5AbEHGwGdtcGsLcOW/AIwAwm0Tt7EFMMSnhoIV+sPd"
        "8KjuGEZZnqEX409bcSzzhdgrofMl40Tw8HvJ2Ivzr6H3B7f3Nz0MER71LyTBw1V0ftncD8Y8mZh4Pv+RYM/TkeNS"
        "bxwQtkr8CD45GBEjl9CJK2KICGzKRnRqTwg3ZD8t47ufcqqfQsKl1eJ8ZO9nEt9J4EsZ+FoCX49jBjFCVrNlxfn0"
        "PbJ4KimeyueUAFLGr4aagf/bHKL7wzV4I4XP6lulrjL++q2jWb+joz+ETfMkF/2xpv54o79S/aqW/giiVj76m5r6"
        "mxv9lerXdfSH1im2Grno39DUv7HRX6n+vob+oaFmA/5B/3KKR8aECSqWEf5yDX4vhZexcMP34dyljgvIgnLB89Hl"
        "11yy8MUUvp54VyV51O+BO/+6X8aB3n5gZDYT91jHs53ikbH9yMP3riOoz754VPbEBhPCSGB7wPGZQ2Yil/lE72fd"
        "/686HmnvxwfV649k"
    ),
}
META_WNIDS = ["n02119789", "n02100735", "n02110185", "n02096294"]


def meta_mat(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"meta-{kind}.mat"
    p.write_bytes(zlib.decompress(base64.b64decode(META_MAT[kind])))
    return p


@pytest.mark.parametrize("kind", ["compressed", "plain"])
def test_meta_mat_without_scipy(tmp_path: Path, kind: str) -> None:
    path = meta_mat(tmp_path, kind)
    assert matlab.imagenet_synsets(path) == META_WNIDS
    synsets = matlab.load(path)["synsets"]
    assert len(synsets) == 6 and synsets[4]["children"] == [1.0, 2.0]
    assert synsets[0]["gloss"] == "gloss 1"


def test_meta_mat_rejects_other_files(tmp_path: Path) -> None:
    p = tmp_path / "x.mat"
    p.write_bytes(b"MATLAB 7.3 MAT-file" + bytes(200))
    with pytest.raises(matlab.MatFileError):
        matlab.load(p)
    with pytest.raises(LayoutInputInvalid):
        layout.read_synsets(p)


def expected_tree(inputs: dict[str, object]) -> dict[str, bytes]:
    val = inputs["val"]
    assert isinstance(val, Path)
    expected = inputs["expected"]
    assert isinstance(expected, dict)
    return {f"{wnid}/{name}": (val / name).read_bytes() for name, wnid in expected.items()}


@pytest.mark.parametrize("source", ["devkit", "loc_csv", "labels"])
def test_imagenet_val_sorted_into_classes(tmp_path: Path, source: str) -> None:
    inputs = A.imagenet_val(tmp_path, images=300, classes=12)
    want = expected_tree(inputs)
    kw: dict[str, Path] = {
        "devkit": {
            "ground_truth": tmp_path / "ground_truth.txt",
            "synsets": tmp_path / "synsets.txt",
        },
        "loc_csv": {"labels": tmp_path / "LOC_val_solution.csv"},
        "labels": {"labels": tmp_path / "labels.txt"},
    }[source]
    seen: list[tuple[int, int]] = []
    result = sort_imagenet_val(
        tmp_path / "val", **kw, expected_images=300, progress=lambda d, t: seen.append((d, t))
    )
    assert (result.moved, result.total) == (300, 300)
    assert A.read_tree(tmp_path / "val") == want
    assert seen[-1] == (300, 300)
    # Done: a second call moves nothing.
    assert sort_imagenet_val(tmp_path / "val", **kw).moved == 0


def test_imagenet_val_with_devkit_meta_mat(tmp_path: Path) -> None:
    val = tmp_path / "val"
    val.mkdir()
    truth = [3, 1, 4, 1, 2, 2, 4, 3]
    for i in range(1, len(truth) + 1):
        (val / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(b"%d" % i)
    (tmp_path / "gt.txt").write_text("\n".join(map(str, truth)) + "\n")
    sort_imagenet_val(
        val,
        ground_truth=tmp_path / "gt.txt",
        synsets=meta_mat(tmp_path, "compressed"),
        expected_classes=4,
    )
    for i, index in enumerate(truth, start=1):
        assert (val / META_WNIDS[index - 1] / f"ILSVRC2012_val_{i:08d}.JPEG").exists()


def test_imagenet_val_resumes_after_a_crash(tmp_path: Path) -> None:
    inputs = A.imagenet_val(tmp_path, images=50, classes=5)
    want = expected_tree(inputs)
    val = tmp_path / "val"
    expected = inputs["expected"]
    assert isinstance(expected, dict)
    # Half of the images were moved before the crash.
    for name in sorted(expected)[:25]:
        (val / expected[name]).mkdir(exist_ok=True)
        os.rename(val / name, val / expected[name] / name)
    result = sort_imagenet_val(val, labels=tmp_path / "labels.txt")
    assert (result.moved, result.total) == (25, 50)
    assert A.read_tree(val) == want


def test_imagenet_val_checks_before_moving(tmp_path: Path) -> None:
    A.imagenet_val(tmp_path, images=40, classes=4)
    val = tmp_path / "val"
    (val / "ILSVRC2012_val_00000007.JPEG").unlink()
    before = sorted(os.listdir(val))
    with pytest.raises(ImageMissing) as info:
        sort_imagenet_val(val, labels=tmp_path / "labels.txt")
    assert info.value.details["numbers"] == [7]
    assert sorted(os.listdir(val)) == before
    (val / "ILSVRC2012_val_00000007.JPEG").write_bytes(b"back")
    with pytest.raises(CountMismatch):
        sort_imagenet_val(val, labels=tmp_path / "labels.txt", expected_images=50_000)
    (val / "ILSVRC2012_val_00000099.JPEG").write_bytes(b"extra")
    with pytest.raises(LayoutInputInvalid, match="no label"):
        sort_imagenet_val(val, labels=tmp_path / "labels.txt")
    after = sorted([*before, "ILSVRC2012_val_00000007.JPEG", "ILSVRC2012_val_00000099.JPEG"])
    assert sorted(os.listdir(val)) == after


@pytest.mark.parametrize(
    ("name", "text", "kind"),
    [
        ("gt.txt", "1\n2\nthree\n", "ground_truth"),
        ("gt.txt", "1\n0\n", "ground_truth"),
        ("syn.txt", "n01440764 tench\nfish\n", "synsets"),
        ("LOC_val_solution.csv", "ImageId,PredictionString\nfoo,bar\n", "labels"),
    ],
)
def test_bad_label_files_name_file_and_line(
    tmp_path: Path, name: str, text: str, kind: str
) -> None:
    (tmp_path / name).write_text(text)
    (tmp_path / "val").mkdir()
    other = {"ground_truth": "synsets", "synsets": "ground_truth"}.get(kind)
    kw = {kind: tmp_path / name}
    if other:
        (tmp_path / "other.txt").write_text(
            "n01440764\nn01443537\n" if other == "synsets" else "1\n"
        )
        kw[other] = tmp_path / "other.txt"
    with pytest.raises(LayoutInputInvalid) as info:
        sort_imagenet_val(tmp_path / "val", **kw)
    assert "line" in info.value.details


# --- framework caches ----------------------------------------------------------------------


def cifar_archive(tmp_path: Path) -> Path:
    files = {f"cifar-10-batches-py/{n}": n.encode() * 100 for n in layout._TV_CIFAR10}
    files["cifar-10-batches-py/readme.html"] = b"<html/>"
    return A.make_tar(tmp_path / "cifar-10-python.tar.gz", files, "gz")


def test_keras_cifar10_placement(tmp_path: Path) -> None:
    archive = cifar_archive(tmp_path)
    extract(archive, tmp_path / "data")
    home = tmp_path / "keras-home"
    spec = FrameworkCache("keras", "cifar10", home, check=False)
    placed = place_for_framework(spec, archive=archive, extracted=tmp_path / "data")
    ds = home / "datasets"
    assert sorted(p.relative_to(ds).as_posix() for p in placed) == [
        "cifar-10-batches-py",
        "cifar-10-batches-py-target_archive",
        "cifar-10-batches-py.tar.gz",
    ]
    # Keras 2's get_file(untar=True) finds both the archive and the extracted folder.
    assert (ds / "cifar-10-batches-py.tar.gz").read_bytes() == archive.read_bytes()
    assert (ds / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"data_batch_1" * 100
    # Hard links: no second copy of the data.
    assert (ds / "cifar-10-batches-py.tar.gz").stat().st_ino == archive.stat().st_ino
    # Idempotent.
    assert place_for_framework(spec, archive=archive, extracted=tmp_path / "data") == placed


def test_framework_check_uses_the_frameworks_digests(tmp_path: Path) -> None:
    # Keras checks the archive's sha256; ours is not the real CIFAR-10, so Keras would
    # download again: that must be an error, not a silent success.
    archive = cifar_archive(tmp_path)
    extract(archive, tmp_path / "data")
    spec = FrameworkCache("keras", "cifar10", tmp_path / "home")
    with pytest.raises(FrameworkCheckFailed) as info:
        place_for_framework(spec, archive=archive, extracted=tmp_path / "data")
    assert info.value.details["expected"].startswith("6d958be0")
    spec_tv = FrameworkCache("torchvision", "cifar10", tmp_path / "tv")
    with pytest.raises(FrameworkCheckFailed) as info:
        place_for_framework(spec_tv, archive=archive, extracted=tmp_path / "data")
    assert info.value.details["algorithm"] == "md5"


def test_framework_check_passes_on_matching_digests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = cifar_archive(tmp_path)
    extract(archive, tmp_path / "data")
    real = {n: hashlib.md5(n.encode() * 100).hexdigest() for n in layout._TV_CIFAR10}
    monkeypatch.setitem(
        layout._FOLDER_DIGESTS,
        ("torchvision", "cifar10"),
        {f"cifar-10-batches-py/{k}": {"md5": v} for k, v in real.items()},
    )
    spec = FrameworkCache("torchvision", "cifar10", tmp_path / "tv")
    place_for_framework(spec, archive=archive, extracted=tmp_path / "data")
    # torchvision's CIFAR10(root) looks at root/cifar-10-batches-py/<batch>.
    for name, digest in real.items():
        data = (tmp_path / "tv" / "cifar-10-batches-py" / name).read_bytes()
        assert hashlib.md5(data).hexdigest() == digest


def test_torchvision_mnist_raw_files(tmp_path: Path) -> None:
    root = tmp_path / "tv"
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        gz = A.make_single(tmp_path / f"{name}.gz", name.encode() * 50, "gz")
        extract(gz, tmp_path / "mnist")
        spec = FrameworkCache("torchvision", "mnist", root, mode="symlink")
        placed = place_for_framework(spec, archive=gz, extracted=tmp_path / "mnist")
        # torchvision's MNIST(root) checks root/MNIST/raw/<name without .gz>.
        dest = root / "MNIST" / "raw" / name
        assert dest in placed
        assert dest.is_symlink() and dest.read_bytes() == name.encode() * 50


def test_placement_errors(tmp_path: Path) -> None:
    archive = cifar_archive(tmp_path)
    extract(archive, tmp_path / "data")
    with pytest.raises(UnknownDataset):
        place_for_framework(
            FrameworkCache("keras", "imagenet21k", tmp_path), archive=archive, extracted=None
        )
    # An archive of another dataset provides nothing keras/mnist needs.
    with pytest.raises(UnknownDataset, match=r"mnist\.npz"):
        place_for_framework(
            FrameworkCache("keras", "mnist", tmp_path / "h"), archive=archive, extracted=None
        )
    home = tmp_path / "home"
    (home / "datasets").mkdir(parents=True)
    (home / "datasets" / "cifar-10-batches-py.tar.gz").write_bytes(b"user's own file")
    spec = FrameworkCache("keras", "cifar10", home, check=False)
    with pytest.raises(PlacementConflict):
        place_for_framework(spec, archive=archive, extracted=tmp_path / "data")
    assert (home / "datasets" / "cifar-10-batches-py.tar.gz").read_bytes() == b"user's own file"
    replace = FrameworkCache("keras", "cifar10", home, check=False, replace=True)
    place_for_framework(replace, archive=archive, extracted=tmp_path / "data")
    assert (home / "datasets" / "cifar-10-batches-py.tar.gz").read_bytes() == archive.read_bytes()


# --- listings --------------------------------------------------------------------------------


def test_listing_and_counts(tmp_path: Path) -> None:
    inner = {f"n{i:08d}.tar": A.sample_tree(7, 1, 500, seed=i) for i in range(5)}
    outer = A.make_nested_tar(tmp_path / "train.tar", inner)
    root = tmp_path / "train"
    extract(outer, root, nested=True, workers=2)
    summary = write_listing(root)
    assert (summary.files, summary.folders) == (35, 5 + 5 * 3)
    assert summary.bytes == sum(len(d) for f in inner.values() for d in f.values())
    lines = summary.listing.read_text().splitlines()
    paths = [line.split("\t")[0] for line in lines]
    assert len(lines) == 35 and paths == sorted(paths, key=lambda p: p.split("/"))
    first_path, first_size = lines[0].split("\t")
    assert (root / first_path).stat().st_size == int(first_size)
    assert not summary.listing.is_relative_to(root)
    check_counts(summary, ExpectedCounts(files=35, folders=20))
    with pytest.raises(CountMismatch) as info:
        check_counts(summary, ExpectedCounts(files=1_281_167, folders=1000))
    assert [m["what"] for m in info.value.details["mismatches"]] == ["files", "folders"]


def test_listing_jsonl(tmp_path: Path) -> None:
    A.write_tree(tmp_path / "ds", {"a/b.txt": b"12345", "c.txt": b""})
    summary = write_listing(tmp_path / "ds", tmp_path / "ds.jsonl", fmt="jsonl")
    assert summary.listing.read_text().splitlines() == [
        '{"path": "a/b.txt", "size": 5}',
        '{"path": "c.txt", "size": 0}',
    ]
