"""Layouts users expect: ImageNet validation images sorted into class folders, datasets
placed where Keras and torchvision look before they download, and a listing of every
dataset with its counts checked.

**ImageNet validation** (:func:`sort_imagenet_val`). ``ILSVRC2012_img_val.tar`` holds
50,000 images ``ILSVRC2012_val_00000001.JPEG`` ... in one folder; training code
(``torchvision.datasets.ImageFolder``, Keras' ``image_dataset_from_directory``) wants one
folder per class (``n01440764/``). The labels come from one of:

* the devkit (``ILSVRC2012_devkit_t12.tar.gz``): ``data/ILSVRC2012_validation_ground_truth.txt``
  (one ILSVRC2012_ID, 1..1000, per line, in image order) plus the ID -> WNID mapping, given
  as the devkit's ``data/meta.mat`` itself (read by :mod:`acquired.unpack.matlab`, no scipy)
  or as a text file with one WNID per line in ILSVRC2012_ID order (line k = ID k; other
  words after the WNID are ignored). Note that ``LOC_synset_mapping.txt`` is in *sorted*
  WNID order, which is not the devkit's ID order: it is only right together with labels
  that are WNIDs already;
* ``LOC_val_solution.csv`` (Kaggle's ImageNet localisation challenge): ``ImageId`` and a
  ``PredictionString`` whose first word is the WNID;
* a text file with one WNID per line in image order (50,000 lines, e.g. TensorFlow's
  ``imagenet_2012_validation_synset_labels.txt``).

Images are renamed within the folder (instant, same filesystem). Everything is checked
before the first rename (every image has a label, every label has an image, the counts
the manifest expects); a crash half-way is finished by the next call.

**Framework caches** (:func:`place_for_framework`): see :data:`PLACEMENTS` for the
supported datasets and the source of every path and digest.

**Listings** (:func:`write_listing`): one line per file, ``<relative path>\\t<size>``
(TSV, sorted) or JSON lines, plus counts checked by :func:`check_counts`.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from . import matlab
from .errors import (
    CountMismatch,
    ExtractCancelled,
    FrameworkCheckFailed,
    ImageMissing,
    LayoutInputInvalid,
    PlacementConflict,
    UnknownDataset,
    WriteFailed,
)
from .verify import hash_file

Progress = Callable[[int, int], None]

_WNID = re.compile(r"n\d{8}")
_VAL_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.(?:JPEG|jpeg|jpg|JPG|png|PNG)")


@dataclass(frozen=True)
class LayoutResult:
    """What a layout did: ``moved`` files (this call), ``total`` files in the layout,
    ``classes`` folders."""

    root: Path
    moved: int
    total: int
    classes: int


# --- ImageNet validation --------------------------------------------------------------------


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text("utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise LayoutInputInvalid(f"{path} does not exist", path=str(path)) from None


def read_ground_truth(path: Path, classes: int | None = None) -> list[int]:
    """The devkit's ground truth: one class index (1-based) per line, in image order."""
    out: list[int] = []
    for number, line in enumerate(_lines(path), start=1):
        text = line.strip()
        if not text:
            continue
        if not text.isdigit() or int(text) < 1 or (classes is not None and int(text) > classes):
            raise LayoutInputInvalid(
                f"{path.name}:{number}: {text!r} is not a class index"
                + (f" 1..{classes}" if classes else ""),
                path=str(path),
                line=number,
            )
        out.append(int(text))
    if not out:
        raise LayoutInputInvalid(f"{path.name}: no class indices", path=str(path))
    return out


def read_synsets(path: Path) -> list[str]:
    """WNIDs in ILSVRC2012_ID order (index 0 is ID 1), from the devkit's ``meta.mat`` or
    from a text file with the WNID first on each line."""
    if path.suffix.lower() == ".mat":
        try:
            return matlab.imagenet_synsets(path)
        except matlab.MatFileError as exc:
            raise LayoutInputInvalid(f"{path.name}: {exc}", path=str(path)) from None
    out: list[str] = []
    for number, line in enumerate(_lines(path), start=1):
        words = line.split()
        if not words:
            continue
        if not _WNID.fullmatch(words[0]):
            raise LayoutInputInvalid(
                f"{path.name}:{number}: {words[0]!r} is not a WordNet id (n01440764)",
                path=str(path),
                line=number,
            )
        out.append(words[0])
    if not out:
        raise LayoutInputInvalid(f"{path.name}: no WordNet ids", path=str(path))
    return out


def read_labels(path: Path) -> dict[int, str]:
    """Per-image WNIDs, by image number: ``LOC_val_solution.csv`` or one WNID per line."""
    labels: dict[int, str] = {}
    text = _lines(path)
    if text and text[0].replace(" ", "").lower().startswith("imageid,"):
        for number, row in enumerate(csv.reader(text[1:]), start=2):
            if not row:
                continue
            m = _VAL_IMAGE.fullmatch(row[0].strip() + ".JPEG")
            words = row[1].split() if len(row) > 1 else []
            if m is None or not words or not _WNID.fullmatch(words[0]):
                raise LayoutInputInvalid(
                    f"{path.name}:{number}: expected 'ILSVRC2012_val_<8 digits>,<wnid> ...'",
                    path=str(path),
                    line=number,
                )
            labels[int(m.group(1))] = words[0]
        return labels
    for number, line in enumerate(text, start=1):
        words = line.split()
        if not words:
            continue
        if not _WNID.fullmatch(words[0]):
            raise LayoutInputInvalid(
                f"{path.name}:{number}: {words[0]!r} is not a WordNet id",
                path=str(path),
                line=number,
            )
        labels[len(labels) + 1] = words[0]
    return labels


def imagenet_val_labels(
    *,
    ground_truth: Path | None = None,
    synsets: Path | None = None,
    labels: Path | None = None,
) -> dict[int, str]:
    """Image number -> WNID from the inputs a manifest gives (see the module doc)."""
    if labels is not None:
        return read_labels(labels)
    if ground_truth is None or synsets is None:
        raise LayoutInputInvalid(
            "the ImageNet validation layout needs `labels`, or `ground_truth` and `synsets`"
        )
    wnids = read_synsets(synsets)
    truth = read_ground_truth(ground_truth, len(wnids))
    return {i: wnids[c - 1] for i, c in enumerate(truth, start=1)}


def sort_imagenet_val(
    images: Path,
    *,
    ground_truth: Path | None = None,
    synsets: Path | None = None,
    labels: Path | None = None,
    expected_images: int | None = None,
    expected_classes: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> LayoutResult:
    """Move ``images/ILSVRC2012_val_*.JPEG`` into ``images/<wnid>/``.

    Raises :class:`LayoutInputInvalid` (bad label files, images without a label),
    :class:`ImageMissing` (labelled images that are absent), :class:`CountMismatch`
    (``expected_images`` / ``expected_classes``) — all before anything moves.
    """
    by_number = imagenet_val_labels(ground_truth=ground_truth, synsets=synsets, labels=labels)
    flat: dict[int, str] = {}
    placed: set[int] = set()
    try:
        entries = list(os.scandir(images))
    except FileNotFoundError:
        raise ImageMissing(f"{images} does not exist", path=str(images)) from None
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            m = _VAL_IMAGE.fullmatch(entry.name)
            if m:
                flat[int(m.group(1))] = entry.name
        elif entry.is_dir(follow_symlinks=False) and _WNID.fullmatch(entry.name):
            for sub in os.scandir(entry.path):
                m = _VAL_IMAGE.fullmatch(sub.name)
                if m:
                    placed.add(int(m.group(1)))
    present = set(flat) | placed
    unlabelled = sorted(present - set(by_number))
    if unlabelled:
        raise LayoutInputInvalid(
            f"{len(unlabelled)} image(s) have no label, e.g. number {unlabelled[0]}",
            count=len(unlabelled),
            numbers=unlabelled[:20],
        )
    missing = sorted(set(by_number) - present)
    if missing:
        raise ImageMissing(
            f"{len(missing)} labelled image(s) are not in {images}, e.g. "
            f"ILSVRC2012_val_{missing[0]:08d}.JPEG",
            count=len(missing),
            numbers=missing[:20],
            path=str(images),
        )
    classes = set(by_number.values())
    _expect("images", len(present), expected_images, images)
    _expect("classes", len(classes), expected_classes, images)
    total = len(flat)
    made: set[str] = set()
    for done, (number, name) in enumerate(sorted(flat.items()), start=1):
        if cancel is not None and cancel.is_set():
            raise ExtractCancelled("the ImageNet validation layout was cancelled")
        wnid = by_number[number]
        if wnid not in made:
            (images / wnid).mkdir(exist_ok=True)
            made.add(wnid)
        try:
            os.rename(images / name, images / wnid / name)
        except OSError as exc:
            raise WriteFailed(f"cannot move {name}: {exc.strerror}", path=str(images)) from None
        if progress is not None and (done == total or done % 1000 == 0):
            progress(done, total)
    return LayoutResult(images, total, len(present), len(classes))


def _expect(what: str, actual: int, expected: int | None, root: Path) -> None:
    if expected is not None and actual != expected:
        raise CountMismatch(
            f"{root}: {actual} {what}, expected {expected}",
            what=what,
            actual=actual,
            expected=expected,
            path=str(root),
        )


# --- framework caches ------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """One path a framework looks at, relative to its cache root, and what goes there:
    ``source`` is ``"archive"`` (the downloaded file itself, when its name is
    ``archive_name``) or a path inside the extraction folder. ``digests`` are what the
    framework itself checks; ``note`` says where that behaviour is documented."""

    dest: str
    source: str
    archive_name: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    note: str = ""


_TV_CIFAR10 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
_TV_CIFAR100 = {
    "train": "16019d7e3df5f24257cddd939b257f8d",
    "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "meta": "7973b15100ade9c7d40fb424638fde48",
}
_MNIST_RAW = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# keras/src/datasets/fashion_mnist.py FILE_HASHES (sha256).
_KERAS_FASHION = {
    "train-labels-idx1-ubyte.gz": (
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
    ),
    "train-images-idx3-ubyte.gz": (
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
    ),
}

# Keras: `keras.utils.get_file` caches under $KERAS_HOME or ~/.keras (the `root` here),
# subfolder "datasets" (keras/src/utils/file_utils.py; keras/utils/data_utils.py in
# Keras 2). Keras 2 / tf.keras, with untar=True: the archive is
# datasets/<fname>.tar.gz, extracted into datasets/ (so datasets/<fname>/), and neither
# is fetched again when both exist and the archive's hash matches. Keras 3, with
# extract/untar and an fname without a dot: the archive is datasets/<fname>_archive and
# is fetched again only when missing or its hash differs (it is re-extracted on every
# call, into datasets/<fname>/, so only the archive is placed for it).
# torchvision: the `root` argument of the dataset class (torchvision/datasets/cifar.py:
# root/cifar-10-batches-py/<batch> with the md5s below, checked by _check_integrity and
# _load_meta; torchvision/datasets/mnist.py: root/<ClassName>/raw/<file without .gz>,
# checked for existence by _check_exists).
PLACEMENTS: dict[tuple[str, str], tuple[Placement, ...]] = {
    ("keras", "cifar10"): (
        Placement(
            "datasets/cifar-10-batches-py.tar.gz",
            "archive",
            "cifar-10-python.tar.gz",
            {"sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
            "Keras 2: cifar10.load_data get_file('cifar-10-batches-py', untar=True)",
        ),
        Placement(
            "datasets/cifar-10-batches-py", "cifar-10-batches-py", note="Keras 2: untar_fpath"
        ),
        Placement(
            "datasets/cifar-10-batches-py-target_archive",
            "archive",
            "cifar-10-python.tar.gz",
            {"sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
            "Keras 3: get_file(fname='cifar-10-batches-py-target', extract=True)",
        ),
    ),
    ("keras", "cifar100"): (
        Placement(
            "datasets/cifar-100-python.tar.gz",
            "archive",
            "cifar-100-python.tar.gz",
            {"sha256": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"},
            "Keras 2: cifar100.load_data get_file('cifar-100-python', untar=True)",
        ),
        Placement("datasets/cifar-100-python", "cifar-100-python", note="Keras 2: untar_fpath"),
        Placement(
            "datasets/cifar-100-python_archive",
            "archive",
            "cifar-100-python.tar.gz",
            {"sha256": "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"},
            "Keras 3: get_file(fname='cifar-100-python', untar=True)",
        ),
    ),
    ("keras", "mnist"): (
        Placement(
            "datasets/mnist.npz",
            "archive",
            "mnist.npz",
            {"sha256": "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"},
            "mnist.load_data(path='mnist.npz')",
        ),
    ),
    ("keras", "fashion_mnist"): tuple(
        Placement(
            f"datasets/fashion-mnist/{name}",
            "archive",
            name,
            {"sha256": digest},
            "fashion_mnist.load_data: cache_subdir='datasets/fashion-mnist'",
        )
        for name, digest in _KERAS_FASHION.items()
    ),
    ("torchvision", "cifar10"): (
        Placement(
            "cifar-10-batches-py",
            "cifar-10-batches-py",
            digests={},
            note="CIFAR10(root): base_folder",
        ),
    ),
    ("torchvision", "cifar100"): (
        Placement("cifar-100-python", "cifar-100-python", note="CIFAR100(root): base_folder"),
    ),
    **{
        ("torchvision", key): tuple(
            Placement(f"{cls}/raw/{name}", name, note=f"{cls}(root): raw_folder")
            for name in _MNIST_RAW
        )
        for key, cls in (
            ("mnist", "MNIST"),
            ("fashion_mnist", "FashionMNIST"),
            ("kmnist", "KMNIST"),
        )
    },
}

# Files inside placed folders that the framework checks by digest.
_FOLDER_DIGESTS: dict[tuple[str, str], dict[str, dict[str, str]]] = {
    ("torchvision", "cifar10"): {
        f"cifar-10-batches-py/{k}": {"md5": v} for k, v in _TV_CIFAR10.items()
    },
    ("torchvision", "cifar100"): {
        f"cifar-100-python/{k}": {"md5": v} for k, v in _TV_CIFAR100.items()
    },
}


@dataclass(frozen=True)
class FrameworkCache:
    """Where a framework should find a dataset. ``root``: Keras' home (``~/.keras`` or
    ``$KERAS_HOME``) or the ``root=`` given to a torchvision dataset class. ``mode``:
    ``hardlink`` (no extra space; copies across filesystems), ``symlink`` or ``copy``.
    ``check``: verify the framework's own recorded digests after placing (it would
    download again otherwise). ``replace``: overwrite different data already there."""

    framework: str
    dataset: str
    root: Path
    mode: str = "hardlink"
    check: bool = True
    replace: bool = False


def supported_datasets() -> list[str]:
    """``framework/dataset`` names :func:`place_for_framework` knows."""
    return sorted(f"{f}/{d}" for f, d in PLACEMENTS)


def place_for_framework(
    spec: FrameworkCache,
    *,
    archive: Path | None,
    extracted: Path | None,
    progress: Progress | None = None,
) -> list[Path]:
    """Place what one manifest file provides (``archive``: the downloaded file, kept;
    ``extracted``: the folder it was extracted into) where ``spec.framework`` looks for
    ``spec.dataset``. Entries for other files of the dataset are skipped; it is an error
    when nothing applies. Returns the paths placed (absolute)."""
    key = (spec.framework.lower(), spec.dataset.lower())
    if key not in PLACEMENTS:
        raise UnknownDataset(
            f"no framework placement for {spec.framework}/{spec.dataset}",
            supported=supported_datasets(),
        )
    if spec.mode not in ("hardlink", "symlink", "copy"):
        raise UnknownDataset(f"placement mode {spec.mode!r}: use hardlink, symlink or copy")
    todo: list[tuple[Placement, Path]] = []
    for p in PLACEMENTS[key]:
        if p.source == "archive":
            if archive is not None and archive.name == p.archive_name and archive.exists():
                todo.append((p, archive))
        elif extracted is not None and (extracted / p.source).exists():
            todo.append((p, extracted / p.source))
    if not todo:
        names = sorted({p.archive_name or p.source for p in PLACEMENTS[key]})
        raise UnknownDataset(
            f"{spec.framework}/{spec.dataset} needs one of {', '.join(names)}; this file "
            "provides none (was the archive deleted after extraction, or extracted elsewhere?)",
            needs=names,
        )
    placed: list[Path] = []
    for index, (p, source) in enumerate(todo, start=1):
        dest = spec.root / p.dest
        _place(source, dest, spec.mode, spec.replace)
        placed.append(dest)
        if spec.check:
            for algo, digest in p.digests.items():
                _framework_digest(dest, algo, digest, spec)
            for rel, digests in _FOLDER_DIGESTS.get(key, {}).items():
                if rel.split("/")[0] == p.dest.split("/")[0]:
                    for algo, digest in digests.items():
                        _framework_digest(spec.root / rel, algo, digest, spec)
        if progress is not None:
            progress(index, len(todo))
    return placed


def _framework_digest(path: Path, algorithm: str, expected: str, spec: FrameworkCache) -> None:
    if not path.exists():
        raise FrameworkCheckFailed(
            f"{spec.framework}/{spec.dataset} expects {path}, which is not there",
            path=str(path),
        )
    actual = hash_file(path, [algorithm])[algorithm]
    if actual != expected:
        raise FrameworkCheckFailed(
            f"{path.name}: {spec.framework} checks {algorithm} {expected} but the file has "
            f"{actual}; {spec.framework} would download it again",
            path=str(path),
            algorithm=algorithm,
            expected=expected,
            actual=actual,
        )


def _same(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except FileNotFoundError:
        return False
    if (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino):
        return True
    if a.is_file() and b.is_file():
        if sa.st_size != sb.st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(1 << 20), fb.read(1 << 20)
                if x != y:
                    return False
                if not x:
                    return True
    if a.is_dir() and b.is_dir():
        names_a = sorted(os.listdir(a))
        return names_a == sorted(os.listdir(b)) and all(_same(a / n, b / n) for n in names_a)
    return False


def _place(source: Path, dest: Path, mode: str, replace: bool) -> None:
    """Put ``source`` (file or folder) at ``dest`` atomically; idempotent."""
    if os.path.lexists(dest):
        if dest.is_symlink() and mode == "symlink" and os.readlink(dest) == str(source):
            return
        if _same(source, dest):
            return
        if not replace:
            raise PlacementConflict(f"{dest} already exists with other content", path=str(dest))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.acquired-tmp")
    _remove(tmp)
    try:
        if mode == "symlink":
            os.symlink(source, tmp)
        elif source.is_dir():
            _tree(source, tmp, mode)
        else:
            _file(source, tmp, mode)
        if os.path.lexists(dest):
            old = dest.with_name(f".{dest.name}.acquired-old")
            _remove(old)
            os.rename(dest, old)
            os.rename(tmp, dest)
            _remove(old)
        else:
            os.rename(tmp, dest)
    except OSError as exc:
        _remove(tmp)
        raise WriteFailed(f"cannot place {dest}: {exc.strerror}", path=str(dest)) from None


def _file(source: Path, dest: Path, mode: str) -> None:
    if mode == "hardlink":
        try:
            os.link(source, dest)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
    shutil.copy2(source, dest)


def _tree(source: Path, dest: Path, mode: str) -> None:
    dest.mkdir()
    for entry in os.scandir(source):
        s, d = Path(entry.path), dest / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(s), d)
        elif entry.is_dir():
            _tree(s, d, mode)
        else:
            _file(s, d, mode)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


# --- listings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListingSummary:
    """Counts of a dataset folder: regular ``files``, ``folders`` (all levels, the root
    excluded), total ``bytes``; ``listing`` is the file written."""

    root: Path
    listing: Path
    files: int
    folders: int
    bytes: int


@dataclass(frozen=True)
class ExpectedCounts:
    """Counts a manifest may promise (``None``: not checked), e.g. ImageNet train:
    ``files=1_281_167, folders=1000``."""

    files: int | None = None
    folders: int | None = None
    bytes: int | None = None


def default_listing_path(root: Path) -> Path:
    """``<root's parent>/.acquired/<root's name>/listing.tsv``: beside the dataset, not in
    it (a stray file in a dataset folder can confuse loaders)."""
    root = Path(os.path.abspath(root))
    return root.parent / ".acquired" / root.name / "listing.tsv"


def write_listing(
    root: Path,
    out: Path | None = None,
    *,
    fmt: str = "tsv",
    progress: Progress | None = None,
) -> ListingSummary:
    """Walk ``root`` (sorted, symlinks listed but not followed, the pipeline's own
    ``.acquired*`` entries skipped) and write one line per file: ``path\\tsize`` (TSV) or
    ``{"path": ..., "size": ...}`` (``fmt="jsonl"``), depth first in name order. Written
    to a temporary file and
    renamed, so a listing is complete or absent. ``progress(files, 0)``: files so far
    (the total is unknown while walking)."""
    if fmt not in ("tsv", "jsonl"):
        raise ValueError(f"listing format {fmt!r}: use tsv or jsonl")
    listing = out if out is not None else default_listing_path(root)
    if not root.is_dir():
        raise CountMismatch(f"{root} is not a folder", path=str(root))
    listing.parent.mkdir(parents=True, exist_ok=True)
    tmp = listing.with_name(f".{listing.name}.tmp")
    counts = [0, 0, 0]  # files, folders, bytes

    def walk(rel: str, f: IO[str]) -> None:
        with os.scandir(root / rel if rel else root) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not rel and entry.name.startswith(".acquired"):
                continue
            r = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                counts[1] += 1
                walk(r, f)
                continue
            if Path(entry.path) == listing:
                continue
            size = entry.stat(follow_symlinks=False).st_size
            if entry.is_file(follow_symlinks=False):
                counts[0] += 1
                counts[2] += size
            if fmt == "tsv":
                f.write(f"{r}\t{size}\n")
            else:
                f.write(json.dumps({"path": r, "size": size}) + "\n")
            if progress is not None and counts[0] % 10_000 == 0:
                progress(counts[0], 0)

    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as stream:
        walk("", stream)
    files, folders, total = counts
    os.replace(tmp, listing)
    return ListingSummary(root, listing, files, folders, total)


def check_counts(summary: ListingSummary, expected: ExpectedCounts) -> None:
    """Raise :class:`CountMismatch` naming every count that differs."""
    wrong = [
        (what, actual, want)
        for what, actual, want in (
            ("files", summary.files, expected.files),
            ("folders", summary.folders, expected.folders),
            ("bytes", summary.bytes, expected.bytes),
        )
        if want is not None and actual != want
    ]
    if wrong:
        text = ", ".join(f"{a:,} {w} (expected {e:,})" for w, a, e in wrong)
        raise CountMismatch(
            f"{summary.root}: {text}",
            path=str(summary.root),
            listing=str(summary.listing),
            mismatches=[{"what": w, "actual": a, "expected": e} for w, a, e in wrong],
        )
