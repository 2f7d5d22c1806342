"""Fixtures of the system tests: one booted container per session, acquired installed.

Tests in ``test_system_*.py`` are marked ``system``. They run when pytest runs as root
(``make test`` in CI) and are skipped otherwise, with the reason printed at the end. Set
``ACQUIRED_SKIP_SYSTEM=1`` to skip them as root, ``ACQUIRED_SYSTEST_KEEP=1`` to keep the
per-run folder (container journal, nspawn log) even when everything passed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from nspawn_harness import (
    CACHE,
    REPO,
    Container,
    cache_lock,
    ensure_host_packages,
    ensure_tree,
    ensure_venv,
    log,
    why_not_runnable,
)

UNIT = "acquired.service"
SETUP_TIMEOUT = 1500
_skipped: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = why_not_runnable()
    for item in items:
        path = Path(str(item.fspath))
        if path.parent == here and path.name.startswith("test_system_"):
            item.add_marker(pytest.mark.system)
            # the first test also pays for the container: apt, debootstrap, the venv
            item.add_marker(pytest.mark.timeout(SETUP_TIMEOUT))
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"system test not run: {reason}"))
                if not _skipped:
                    _skipped.append(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _skipped:
        terminalreporter.write_sep(
            "!", f"SYSTEM TESTS SKIPPED: {_skipped[0]} — run `make test` as root", red=True
        )


@pytest.fixture(scope="session")
def container(request: pytest.FixtureRequest) -> Iterator[Container]:
    """A booted container with the checkout, the venv and a fresh journal."""
    ensure_host_packages()
    with contextlib.ExitStack() as stack:
        stack.enter_context(cache_lock())
        tree = ensure_tree()
        venv = ensure_venv()
        # binds[0] is the venv: tests read it from there
        ct = Container(tree=tree, binds=[str(venv), str(REPO)])
        failed_before = request.session.testsfailed
        try:
            ct.boot()
            yield ct
        finally:
            if ct.pid:
                journal = ct.run(["journalctl", "--no-pager", "-o", "short-monotonic"])
                (ct.workdir / "container-journal.txt").write_text(journal.stdout)
            left = ct.shutdown()
            failed = request.session.testsfailed > failed_before or bool(left)
            ct.cleanup(keep=failed or os.environ.get("ACQUIRED_SYSTEST_KEEP") == "1")
            log(f"cache {CACHE}")
            assert not left, f"container processes left after teardown: {left}"
