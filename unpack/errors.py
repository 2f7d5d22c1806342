"""Errors of the unpack pipeline. Each has a stable ``code`` and a ``hint`` for the user.

Codes are part of the product's interface (the daemon stores them and ``acquirectl show``
prints them): never rename one once released. ``details`` holds JSON-able facts only.
"""

from __future__ import annotations

from typing import ClassVar

from acquired.common.errors import (
    AcquiredError,
    DigestMismatch,
    InvalidDigest,
    UnsupportedAlgorithm,
)
from acquired.common.errors import DiskFull as _DiskFull

# verify.digest_mismatch, verify.invalid_digest and verify.unsupported_algorithm are shared
# with the sources and raised by acquired.common.digests: their one class lives in
# acquired.common, and the names stay importable from here.
__all__ = [
    "ArchiveMissing",
    "ChecksumFileInvalid",
    "CorruptArchive",
    "CountMismatch",
    "DigestMismatch",
    "DiskFull",
    "EncryptedArchive",
    "ExtractCancelled",
    "FileMissing",
    "FormatMismatch",
    "FrameworkCheckFailed",
    "ImageMissing",
    "InvalidDigest",
    "LayoutInputInvalid",
    "LinkEscape",
    "MemberMissing",
    "PathTraversal",
    "PlacementConflict",
    "ReservedName",
    "SpecialFile",
    "TargetConflict",
    "TooLarge",
    "TooManyEntries",
    "UnknownDataset",
    "UnknownFormat",
    "UnpackError",
    "UnsupportedAlgorithm",
    "WriteFailed",
]


class UnpackError(AcquiredError):
    """Base of every failure of verify, extract and layout steps."""

    code: ClassVar[str] = "unpack.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False


# --- verify -----------------------------------------------------------------------------


class FileMissing(UnpackError):
    """The file to verify or extract does not exist."""

    code = "verify.file_missing"
    hint = "The completed file was moved or deleted; retry the file to fetch it again."
    retryable = True


class ChecksumFileInvalid(UnpackError):
    """A checksum file shipped with a dataset cannot be read."""

    code = "verify.checksum_file_invalid"
    hint = (
        "Checksum files must hold GNU lines ('<hex>  <name>') or BSD lines "
        "('SHA256 (<name>) = <hex>'); name the algorithm in the manifest if the file name "
        "does not tell it (SHA256SUMS, MD5SUMS, *.sha256, *.md5)."
    )


class MemberMissing(UnpackError):
    """A checksum file lists files that are not there."""

    code = "verify.member_missing"
    hint = (
        "The dataset is incomplete: check that every archive of the dataset was extracted "
        "into the folder the checksum file describes (its `base`)."
    )


# --- extract ----------------------------------------------------------------------------


class UnknownFormat(UnpackError):
    """The archive format could not be recognised from the content."""

    code = "unpack.unknown_format"
    hint = (
        "Set the unpack step's format (tar, tar.gz, tar.bz2, tar.xz, tar.zst, zip, gz, bz2, "
        "xz, zst), or remove the unpack step if the file is not an archive."
    )


class FormatMismatch(UnpackError):
    """The manifest names one format but the content is another."""

    code = "unpack.format_mismatch"
    hint = 'Fix the unpack step\'s format in the manifest, or use format = "auto".'


class CorruptArchive(UnpackError):
    """The archive is truncated or malformed."""

    code = "unpack.corrupt_archive"
    hint = (
        "The archive cannot be read to the end. If it passed its checksum, the published "
        "archive itself is damaged; otherwise retry the file to fetch it again."
    )


class EncryptedArchive(UnpackError):
    """A zip member is password-protected."""

    code = "unpack.encrypted"
    hint = "Password-protected archives are not extracted; extract this one by hand."


class PathTraversal(UnpackError):
    """A member's name is absolute or climbs out with ``..``."""

    code = "unpack.path_traversal"
    hint = (
        "The archive tries to write outside its folder (absolute path or '..'); it was "
        "refused and nothing was extracted. Do not extract it by hand."
    )


class LinkEscape(UnpackError):
    """A symlink or hardlink points outside the extraction folder."""

    code = "unpack.link_escape"
    hint = (
        "The archive holds a link that points outside its folder; it was refused and "
        "nothing was extracted. Do not extract it by hand."
    )


class SpecialFile(UnpackError):
    """A member is a device node, FIFO or socket."""

    code = "unpack.special_file"
    hint = "Datasets never need device files or FIFOs; the archive was refused."


class ReservedName(UnpackError):
    """A member uses a name the pipeline keeps for its own bookkeeping."""

    code = "unpack.reserved_name"
    hint = "Extract the archive into another folder (the unpack step's `into`)."


class TooLarge(UnpackError):
    """Extraction would exceed the size limits (absolute, or as a ratio of the archive)."""

    code = "unpack.too_large"
    hint = (
        "The archive expands beyond the configured limits (a zip bomb looks like this). If "
        "the dataset really is that large, raise the step's limits in the manifest."
    )


class TooManyEntries(UnpackError):
    """Extraction would exceed the limit on the number of entries."""

    code = "unpack.too_many_entries"
    hint = (
        "The archive holds more entries than the configured limit. If the dataset really has "
        "that many files, raise the step's max_entries in the manifest."
    )


class TargetConflict(UnpackError):
    """Extracted paths already exist in the target and were not made by this step."""

    code = "unpack.target_conflict"
    hint = (
        "Another step or the user already put files with these names in the target folder. "
        "Move them away or extract into another folder (the unpack step's `into`)."
    )


class ArchiveMissing(UnpackError):
    """The archive to extract is not there (and the step was never finished)."""

    code = "unpack.archive_missing"
    hint = "Retry the file: it is fetched again and then extracted."
    retryable = True


class ExtractCancelled(UnpackError):
    """The daemon asked the step to stop; it is redone from the start next time."""

    code = "unpack.cancelled"
    hint = "The step starts again when the file is resumed."


class DiskFull(_DiskFull, UnpackError):
    """The filesystem ran out of space while extracting; the partial output was removed.

    Code and hint are the shared ``disk.full``; this subclass keeps it an
    :class:`UnpackError` for the pipeline's own handling.
    """


class WriteFailed(UnpackError):
    """Writing the extracted data failed for another reason than a full disk."""

    code = "unpack.write_failed"
    hint = "Check that the daemon may write to the target folder and that the disk is healthy."


# --- layout -----------------------------------------------------------------------------


class LayoutInputInvalid(UnpackError):
    """A file a layout reads (ground truth, synset mapping, labels) is malformed."""

    code = "layout.input_invalid"
    hint = (
        "Point the layout at the devkit's files (ILSVRC2012_validation_ground_truth.txt and "
        "meta.mat or a synset list in the same order) or at LOC_val_solution.csv."
    )


class ImageMissing(UnpackError):
    """Images listed by the ground truth are not in the folder being sorted."""

    code = "layout.image_missing"
    hint = "Check that the validation archive was extracted completely into `images`."


class CountMismatch(UnpackError):
    """A dataset has another number of files, folders or bytes than the manifest expects."""

    code = "layout.count_mismatch"
    hint = (
        "The extracted dataset is incomplete or not the expected release. Compare the listing "
        "with the dataset's documentation; retry the job to extract it again."
    )


class UnknownDataset(UnpackError):
    """A framework placement names a framework or dataset the pipeline does not know."""

    code = "layout.unknown_dataset"
    hint = "See the list of supported framework datasets in the documentation."


class PlacementConflict(UnpackError):
    """A framework cache already holds different data at the place the data goes."""

    code = "layout.placement_conflict"
    hint = "Remove the existing files from the framework cache, or set replace = true."


class FrameworkCheckFailed(UnpackError):
    """The placed files are not the ones the framework checks for: it would download again."""

    code = "layout.framework_check_failed"
    hint = (
        "The dataset is not the release the framework expects (its recorded checksums "
        "differ); the framework would download it again. Check the manifest's source."
    )
