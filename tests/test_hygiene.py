"""Rules the test suite keeps: shared helpers live in tests/support/, pure tests need no swarm."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_another() -> None:
    """A helper two test modules need goes to tests/support/, not from one test to another."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top.startswith("test_") or top == "conftest":
                    found.append(f"{path.relative_to(TESTS)}:{node.lineno} imports {name}")
    assert found == []


def test_choice_policy_tests_run_without_libtorrent() -> None:
    """The pure policy tests collect and pass where ``import libtorrent`` fails."""
    script = (
        "import sys\n"
        "sys.modules['libtorrent'] = None  # any import of it now raises ImportError\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', sys.argv[1]]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(TESTS / "test_choice.py")],
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "libtorrent" not in done.stdout


def test_every_package_folder_is_installed() -> None:
    """An installed daemon (``make install``, the system tests) has only the packages
    pyproject lists; an editable install would hide a missing one."""
    import tomllib

    root = TESTS.parent
    setuptools = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = set()
    for name, folder in setuptools["package-dir"].items():
        for init in (root / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(root / folder).parts
            found.add(".".join((name, *rel)))
    assert found - listed == set()


def test_no_module_over_700_lines_and_no_class_over_400() -> None:
    """The house rule that keeps each piece readable in one sitting: a module that grows
    past it is split by responsibility."""
    root = TESTS.parent
    too_big = []
    for package in ("common", "daemon", "sources", "unpack"):
        for path in (root / package).rglob("*.py"):
            text = path.read_text()
            lines = text.count("\n")
            if lines > 700:
                too_big.append(f"{path.relative_to(root)}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef) and node.end_lineno is not None:
                    size = node.end_lineno - node.lineno + 1
                    if size > 400:
                        too_big.append(f"{path.relative_to(root)}: class {node.name} {size}")
    assert too_big == []
