"""What happens to a completed file: verify its digests, extract it safely, lay it out.

The daemon's entry points are :func:`process_file` (per completed file) and
:func:`finish_job` (once a job's files are all done); the pieces they use are public too:
:func:`verify`, :func:`extract`, :mod:`acquired.unpack.layout`. Nothing here imports the
daemon; progress is reported through ``progress(done, total)`` callbacks called from the
worker thread, and errors are :mod:`acquired.unpack.errors` classes with stable codes.

Nested extraction starts worker processes with the ``spawn`` method: a program that calls
it from its main script must guard that script with ``if __name__ == "__main__":``.
"""

from .extract import ExtractResult, default_meta_dir, extract
from .pipeline import (
    ChecksumFileStep,
    FileOutcome,
    FrameworkStep,
    ImagenetValStep,
    JobOutcome,
    ListingStep,
    UnpackStep,
    finish_job,
    process_file,
)
from .safety import Limits
from .verify import Candidate, match_completed, verify, verify_checksum_file

__all__ = [
    "Candidate",
    "ChecksumFileStep",
    "ExtractResult",
    "FileOutcome",
    "FrameworkStep",
    "ImagenetValStep",
    "JobOutcome",
    "Limits",
    "ListingStep",
    "UnpackStep",
    "default_meta_dir",
    "extract",
    "finish_job",
    "match_completed",
    "process_file",
    "verify",
    "verify_checksum_file",
]
