"""Loaded into the forkserver that starts the URL-list worker processes: imports the
worker's modules once (pycurl, Pillow, pyarrow), and ties the worker processes' lives to
the daemon's, so that a daemon killed with SIGKILL leaves no orphan fetching or writing.

The forkserver asks the kernel for SIGKILL when the daemon dies (``PR_SET_PDEATHSIG``),
and every process it forks asks the same about the forkserver; a restarted daemon starts
a fresh forkserver. It acts only inside the forkserver (``python -c`` running
``multiprocessing.forkserver``): imported anywhere else it only imports.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import acquired.sources.urllist.worker  # noqa: F401  (preloaded for the workers)

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask for SIGKILL when this process's parent ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def in_forkserver() -> bool:
    """Whether this process is multiprocessing's forkserver."""
    return sys.argv == ["-c"] and "multiprocessing.forkserver" in sys.modules


if in_forkserver():
    die_with_parent()
    if os.getppid() == 1:  # the daemon died before the request took effect
        os._exit(0)
    os.register_at_fork(after_in_child=die_with_parent)
