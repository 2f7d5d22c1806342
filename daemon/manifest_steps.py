"""The job-level steps a manifest may ask for once every file is done: checksum files,
ImageNet validation sorting, framework layouts, listings and pip prefetches."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from .manifest_fields import _index_url, _optional, _relative_file, _relative_folder, _Strict
from .units import Bool, Int


class ChecksumsSpec(_Strict):
    """``[[checksums]]``: a checksum file shipped with the dataset (SHA256SUMS, MD5SUMS,
    *.md5); every member it lists is checked once all files are done."""

    file: Annotated[str, BeforeValidator(_relative_file)]
    """The checksum file, relative to the destination."""
    base: Annotated[str | None, _optional(_relative_folder)] = None
    """Folder the listed names are relative to (default: the checksum file's folder)."""
    algorithm: Literal["sha256", "sha1", "md5", "blake2b", "sha512"] | None = None
    """The digest algorithm, when the file's name and line lengths do not tell."""


class ImagenetValLayout(_Strict):
    """``[[layout]] kind = "imagenet-val"``: sort the validation images into one folder per
    class, from the devkit's ground truth (or LOC_val_solution.csv)."""

    kind: Literal["imagenet-val"]
    images: Annotated[str, BeforeValidator(_relative_folder)]
    """Folder holding the 50,000 ILSVRC2012_val_*.JPEG images."""
    ground_truth: Annotated[str | None, _optional(_relative_file)] = None
    """ILSVRC2012_validation_ground_truth.txt of the devkit."""
    synsets: Annotated[str | None, _optional(_relative_file)] = None
    """The devkit's meta.mat, or a file with one WNID per line in devkit id order."""
    labels: Annotated[str | None, _optional(_relative_file)] = None
    """LOC_val_solution.csv or a WNID-per-image file, instead of ground_truth + synsets."""
    expected_images: Int | None = Field(default=None, ge=1)
    expected_classes: Int | None = Field(default=None, ge=1)


class FrameworkLayout(_Strict):
    """``[[layout]] kind = "framework"``: place a dataset where Keras or torchvision looks
    for it, so they do not download it again. ``root`` stays under the destination: point
    KERAS_HOME (Keras) or the dataset's ``root=`` argument (torchvision) at it."""

    kind: Literal["framework"]
    framework: Literal["keras", "torchvision"]
    dataset: str
    """e.g. "cifar10", "cifar100", "mnist", "fashion_mnist"."""
    root: Annotated[str, BeforeValidator(_relative_folder)]
    """The cache folder, relative to the destination (e.g. "keras-home")."""
    file: Annotated[str, BeforeValidator(_relative_file)]
    """The downloaded archive (one of the manifest's files)."""
    into: Annotated[str, BeforeValidator(_relative_folder)] = "."
    """Where the archive was extracted, relative to the destination."""
    mode: Literal["hardlink", "symlink", "copy"] = "hardlink"
    check: Bool = True
    """Check the framework's own recorded digests after placing."""
    replace: Bool = False


Layout = Annotated[ImagenetValLayout | FrameworkLayout, Field(discriminator="kind")]


class ListingSpec(_Strict):
    """``[[listing]]``: write a listing (relative path, size) of a folder of the dataset and
    check it against the counts the dataset should have."""

    root: Annotated[str, BeforeValidator(_relative_folder)] = "."
    path: Annotated[str | None, _optional(_relative_file)] = None
    """Where the listing goes (default: ``.acquired/<root>/listing.tsv`` in the folder that
    holds ``root``, ``.acquired/listing.tsv`` for the destination itself)."""
    format: Literal["tsv", "jsonl"] = "tsv"
    expect_files: Int | None = Field(default=None, ge=0)
    expect_folders: Int | None = Field(default=None, ge=0)
    expect_bytes: Int | None = Field(default=None, ge=0)


def _requirement(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} — a requirement is a string such as 'numpy==2.0.0'")
    text = value.strip()
    # A leading '-' would be read by pip as an option (e.g. --index-url), not a package.
    if text.startswith("-"):
        raise ValueError(
            f"{value!r} is a pip option, not a requirement — use index_urls for indexes and "
            "list packages such as 'numpy==2.0.0'"
        )
    if any(ord(c) < 32 for c in text):
        raise ValueError(f"{value!r} contains a control character — remove it")
    return text


class PipSpec(_Strict):
    """Python wheels to fetch alongside the dataset (into ``target`` under the destination)."""

    requirements: list[Annotated[str, BeforeValidator(_requirement)]] = Field(min_length=1)
    """Requirement specifiers, e.g. "numpy==2.0.0"."""
    target: Annotated[str, BeforeValidator(_relative_folder)] = "wheels"
    """Folder for the wheels, relative to the destination."""
    index_urls: list[Annotated[str, BeforeValidator(_index_url)]] = Field(default_factory=list)
    """Package indexes (http(s)) to use instead of the default one."""
