"""What the daemon's unpack worker calls: one function per completed file, one per
finished job. Steps are plain dataclasses the daemon builds from the manifest; paths in
them are relative to the job's folder (the manifest's ``destination``).

Per file (:func:`process_file`, as soon as the file is complete):
``verify`` (skipped when the source already verified it) -> each ``unpack`` step.

Per job (:func:`finish_job`, once every file of the job is done, because these steps read
several files — the devkit and the validation images, a ``SHA256SUMS`` covering many
archives): checksum files -> layouts -> framework placements -> listings.

``progress(step, done, total)`` is called from the worker thread; ``step`` is a short
label for ``acquirectl status`` (``verify``, ``extract val``, ``checksums SHA256SUMS``...).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from acquired.common import safepath

from .errors import ArchiveMissing, PathTraversal, UnpackError
from .extract import ExtractResult, extract
from .layout import (
    ExpectedCounts,
    FrameworkCache,
    LayoutResult,
    ListingSummary,
    check_counts,
    default_listing_path,
    place_for_framework,
    sort_imagenet_val,
    write_listing,
)
from .safety import Limits
from .verify import ChecksumReport, verify, verify_checksum_file

StepProgress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class UnpackStep:
    """``unpack = [{ format, into, nested, delete_archive, limits }]`` of a manifest file."""

    format: str = "auto"
    into: str = "."
    nested: bool = False
    delete_archive: bool = False
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class ChecksumFileStep:
    """``[[checksums]]``: a checksum file of the dataset, every listed member checked.
    ``base``: the folder names are relative to (default: the checksum file's folder)."""

    file: str
    base: str | None = None
    algorithm: str | None = None


@dataclass(frozen=True)
class ImagenetValStep:
    """``[[layout]] kind = "imagenet-val"``; see :func:`.layout.sort_imagenet_val`."""

    images: str
    ground_truth: str | None = None
    synsets: str | None = None
    labels: str | None = None
    expected_images: int | None = None
    expected_classes: int | None = None


@dataclass(frozen=True)
class FrameworkStep:
    """``[[layout]] kind = "framework"``: place ``file`` (kept archive) and what it was
    extracted to (``into``) where ``framework`` looks for ``dataset``. ``root`` is
    absolute (``~/.keras`` expanded by the daemon, or a torchvision ``root``)."""

    framework: str
    dataset: str
    root: str
    file: str
    into: str = "."
    mode: str = "hardlink"
    check: bool = True
    replace: bool = False


@dataclass(frozen=True)
class ListingStep:
    """``[[listing]]``: a listing of ``root`` (TSV or JSON lines, at ``path`` relative to
    the job folder, default beside the dataset) and the counts the manifest expects."""

    root: str = "."
    path: str | None = None
    format: str = "tsv"
    expect_files: int | None = None
    expect_folders: int | None = None
    expect_bytes: int | None = None


LayoutStep = ImagenetValStep | FrameworkStep


@dataclass(frozen=True)
class FileOutcome:
    """What :func:`process_file` did: the file's digests and one result per step."""

    digests: dict[str, str]
    extractions: tuple[ExtractResult, ...]


@dataclass(frozen=True)
class JobOutcome:
    """What :func:`finish_job` did."""

    checksums: tuple[ChecksumReport, ...] = ()
    layouts: tuple[LayoutResult | list[Path], ...] = ()
    listings: tuple[ListingSummary, ...] = ()


def inside(job_root: Path, rel: str) -> Path:
    """``job_root / rel``, refusing absolute paths and ``..`` (the manifest validates
    these too; this is the pipeline's own guard)."""
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise PathTraversal(f"{rel!r} is not a path inside the job folder", path=rel)
    return job_root / pure if str(pure) != "." else job_root


def identity(digests: dict[str, str]) -> str | None:
    """The digest recorded in extraction markers: sha256 when known, else the first."""
    for algorithm in ("sha256", "blake2b", "sha1", "md5"):
        if algorithm in digests:
            return f"{algorithm}:{digests[algorithm].lower()}"
    return next((f"{a}:{v.lower()}" for a, v in digests.items()), None)


def _labelled(progress: StepProgress | None, label: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(label, done, total)


def process_file(
    path: Path,
    *,
    job_root: Path,
    digests: dict[str, str],
    steps: Sequence[UnpackStep] = (),
    verified: bool = False,
    workers: int | None = None,
    progress: StepProgress | None = None,
    cancel: threading.Event | None = None,
    meta_dir: Path | None = None,
    data_root: Path | None = None,
) -> FileOutcome:
    """Verify a completed file and run its unpack steps.

    ``verified``: the source already checked ``digests`` (the HTTP engine does), so the
    file is not read again. Otherwise the digests are checked while the first step
    extracts into its staging folder, and nothing is placed until they match: a
    mismatch raises :class:`DigestMismatch` and nothing is extracted into the target.
    The archive is deleted after the *last* step if any step asks for it.
    If the archive is gone but every step's marker says done (a restart after the
    deletion), this returns those results without reading anything.
    Nothing is written outside ``job_root`` (see :func:`.extract.extract`); with
    ``data_root`` (a trusted folder above it) the job folder itself is opened beneath it,
    so a destination swapped for a link is refused.
    """
    expected = {a.lower(): v.lower() for a, v in digests.items()}
    ident = identity(expected)
    delete = any(s.delete_archive for s in steps)
    check: Future[dict[str, str]] | None = None
    pool: ThreadPoolExecutor | None = None
    if not verified and path.exists():
        if not steps or not expected:
            actual = verify(path, expected, _labelled(progress, "verify"), cancel=cancel)
            ident = ident or identity(actual)
        else:
            # Verify while extracting into staging; nothing is placed until the digest
            # is known good (one read of the archive hidden behind the other).
            pool = ThreadPoolExecutor(1, thread_name_prefix="verify")
            check = pool.submit(
                verify, path, expected, _labelled(progress, "verify"), cancel=cancel
            )
    results: list[ExtractResult] = []
    try:
        for index, step in enumerate(steps):
            target = inside(job_root, step.into)
            label = f"extract {step.into}" if len(steps) > 1 else "extract"
            try:
                results.append(
                    extract(
                        path,
                        target,
                        step.format,
                        step.limits,
                        workers,
                        _labelled(progress, label),
                        nested=step.nested,
                        digest=ident,
                        delete_archive=delete and index == len(steps) - 1,
                        cancel=cancel,
                        meta_dir=meta_dir,
                        before_place=check.result if check is not None else None,
                        root=job_root,
                        base=data_root,
                    )
                )
            except ArchiveMissing:
                raise ArchiveMissing(
                    f"{path.name} is gone and its step into {step.into!r} never finished",
                    path=str(path),
                ) from None
            except UnpackError:
                # A damaged download often fails to extract before its digest is known:
                # the digest mismatch is the error that leads to a refetch.
                if check is not None:
                    check.result()
                raise
        if check is not None:
            actual = check.result()
        elif verified or not path.exists():
            actual = dict(expected)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return FileOutcome(actual, tuple(results))


def finish_job(
    job_root: Path,
    *,
    checksums: Sequence[ChecksumFileStep] = (),
    layouts: Sequence[LayoutStep] = (),
    listings: Sequence[ListingStep] = (),
    workers: int | None = None,
    progress: StepProgress | None = None,
    cancel: threading.Event | None = None,
) -> JobOutcome:
    """Run the job-level steps once every file is done: checksum files, layouts (in
    manifest order), listings with their count checks."""
    reports = []
    for c in checksums:
        file = inside(job_root, c.file)
        base = inside(job_root, c.base) if c.base is not None else None
        reports.append(
            verify_checksum_file(
                file,
                base,
                _labelled(progress, f"checksums {c.file}"),
                algorithm=c.algorithm,
                workers=workers,
                cancel=cancel,
            )
        )
    done_layouts: list[LayoutResult | list[Path]] = []
    for step in layouts:
        if isinstance(step, ImagenetValStep):
            done_layouts.append(
                sort_imagenet_val(
                    _real_folder(job_root, step.images),
                    ground_truth=_opt(job_root, step.ground_truth),
                    synsets=_opt(job_root, step.synsets),
                    labels=_opt(job_root, step.labels),
                    expected_images=step.expected_images,
                    expected_classes=step.expected_classes,
                    progress=_labelled(progress, "imagenet-val"),
                    cancel=cancel,
                )
            )
        else:
            spec = FrameworkCache(
                step.framework,
                step.dataset,
                Path(os.path.expanduser(step.root)),
                step.mode,
                step.check,
                step.replace,
            )
            archive = inside(job_root, step.file)
            done_layouts.append(
                place_for_framework(
                    spec,
                    archive=archive if archive.exists() else None,
                    extracted=inside(job_root, step.into),
                    progress=_labelled(progress, f"place {step.framework}/{step.dataset}"),
                )
            )
    summaries = []
    for listing in listings:
        root = _real_folder(job_root, listing.root)
        if listing.path:
            out = inside(job_root, listing.path)
        elif listing.root in (".", ""):
            # Beside the folder would be outside the destination: keep it in its own
            # bookkeeping folder instead.
            out = job_root / ".acquired" / "listing.tsv"
        else:
            out = default_listing_path(root)
        _real_folder(job_root, os.path.relpath(out.parent, job_root), create=True)
        summary = write_listing(
            root, out, fmt=listing.format, progress=_labelled(progress, f"listing {listing.root}")
        )
        check_counts(
            summary,
            ExpectedCounts(listing.expect_files, listing.expect_folders, listing.expect_bytes),
        )
        summaries.append(summary)
    return JobOutcome(tuple(reports), tuple(done_layouts), tuple(summaries))


def _real_folder(job_root: Path, rel: str, *, create: bool = False) -> Path:
    """``job_root / rel`` once checked to be a real folder below the job folder: a link on
    the way (planted after the files were placed) is refused with
    :class:`~acquired.common.safepath.PathEscapes` rather than written through."""
    path = inside(job_root, rel)
    with contextlib.suppress(FileNotFoundError):
        os.close(safepath.open_dir_beneath(job_root, rel, create=create))
    return path


def _opt(job_root: Path, rel: str | None) -> Path | None:
    return inside(job_root, rel) if rel is not None else None
