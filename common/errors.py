"""The one error base of acquired: every failure a user can meet has a stable ``code``,
a ``hint`` that says what to do, and whether trying again may help."""

from __future__ import annotations

from typing import Any, ClassVar


def _rebuild(cls: type[AcquiredError], message: str, details: dict[str, Any]) -> AcquiredError:
    return cls(message, **details)


class AcquiredError(Exception):
    """Base of every failure acquired reports.

    ``details`` carries JSON-able facts (URL, expected vs actual, status code) that the
    daemon stores next to the message. Codes are part of the product's interface: never
    rename one once released.
    """

    code: ClassVar[str] = "acquired.error"
    hint: ClassVar[str] = "See the daemon's log for details."
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.details = details

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (worker processes); the default pickling would
        # drop the keyword-only details.
        return (_rebuild, (type(self), str(self), dict(self.details)))


# --- codes raised by more than one package ----------------------------------------------
# Each is defined here once. A package that raises one from its own code and needs it inside
# its own hierarchy (``except UnpackError``, a ``SourceError`` field) subclasses it without
# redefining anything, so ``except acquired.common.errors.DiskFull`` catches every package's.


class DigestMismatch(AcquiredError):
    """A file's content does not match its expected digest.

    details: ``algorithm``, ``expected``, ``actual`` and where the data came from.
    """

    code = "verify.digest_mismatch"
    hint = (
        "The data is discarded and fetched again from another mirror or source if there is "
        "one. If every source gives the same digest, the checksum in the manifest (or the "
        "dataset's checksum file) is probably wrong."
    )
    retryable = True


class UnsupportedAlgorithm(AcquiredError):
    """A digest names an algorithm acquired does not verify."""

    code = "verify.unsupported_algorithm"
    hint = "Use one of sha256, sha512, sha1, md5 or blake2b."


class InvalidDigest(AcquiredError):
    """An expected digest is not hexadecimal of the algorithm's length."""

    code = "verify.invalid_digest"
    hint = "Copy the checksum again from the dataset's page: it must be plain hexadecimal."


class DiskFull(AcquiredError):
    """The filesystem ran out of space while writing (ENOSPC, EDQUOT).

    What a download wrote so far is kept; a half-done extraction is removed and redone.
    """

    code = "disk.full"
    hint = "Free space under the data root; the work resumes by itself."
    retryable = True
