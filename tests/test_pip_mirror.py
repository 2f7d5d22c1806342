"""``acquirectl pip-mirror`` and ``prefetch_wheels`` against local simple indexes."""

from __future__ import annotations

import argparse
import configparser
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http_server import Fault, HttpTestServer, ServerPool, payload, server_pool
from support.pypi import build_wheel, make_index

from acquired.daemon.commands.mirrors import register
from acquired.sources.http.pip_mirrors import (
    IndexResult,
    NoReachableIndex,
    PipDownloadFailed,
    current_index,
    estimate,
    index_from_config,
    mirror_list,
    parse_config_list,
    pip_default_index,
    prefetch_wheels,
    rank_indexes,
    wheel_links,
)

PIP = [sys.executable, "-m", "pip"]
PIP_CMD = f"{sys.executable} -m pip"
SAMPLE_WHEEL = "pip-99.0-py3-none-any.whl"


@pytest.fixture
def pool() -> Iterator[ServerPool]:
    with server_pool() as p:
        yield p


@pytest.fixture
def isolated_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No pip configuration or PIP_* variable of this machine leaks into a test."""
    for key in list(os.environ):
        if key.startswith("PIP_") or key == "ACQUIRED_PIP_MIRRORS":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "home" / ".config"))
    return tmp_path / "home"


def serve_index(pool: ServerPool, root: Path) -> HttpTestServer:
    s = pool.new()
    s.add_tree("/", root)
    return s


@pytest.fixture
def indexes(pool: ServerPool, tmp_path: Path) -> tuple[HttpTestServer, HttpTestServer, str]:
    """A fast index, a slow one (wheel downloads drip) and a dead one."""
    sample = (SAMPLE_WHEEL, payload(256 * 1024, seed=3))
    tiny = build_wheel("tinypkg", "1.0")
    fast = serve_index(pool, make_index(tmp_path / "fast", {"pip": [sample], "tinypkg": [tiny]}))
    slow = serve_index(pool, make_index(tmp_path / "slow", {"pip": [sample], "tinypkg": [tiny]}))
    slow.fault(f"/packages/{SAMPLE_WHEEL}", Fault(rate=256 * 1024), times=None)
    dead = HttpTestServer()
    dead_url = dead.url("/simple")
    dead.stop()
    return fast, slow, dead_url


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="acquirectl")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def test_pip_mirror_ranks_indexes_and_marks_the_current_one(
    indexes: tuple[HttpTestServer, HttpTestServer, str],
    isolated_pip: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fast, slow, dead = indexes
    monkeypatch.setenv("PIP_INDEX_URL", slow.url("/simple"))
    code = run_cli(
        [
            "pip-mirror",
            "--json",
            "--no-defaults",
            "--pip",
            PIP_CMD,
            "--mirror",
            dead,
            "--mirror",
            fast.url("/simple"),
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    urls = [r["url"] for r in out["indexes"]]
    assert urls == [fast.url("/simple"), slow.url("/simple"), dead]
    assert out["current"] == slow.url("/simple")
    assert out["current_source"] == "PIP_INDEX_URL"
    assert out["best"] == fast.url("/simple")
    current = out["indexes"][1]
    assert current["current"] is True and current["reachable"] is True
    assert out["indexes"][2]["reachable"] is False
    assert out["indexes"][2]["error"] == "connection refused"
    # Page latency from the project page, throughput from its wheel.
    assert fast.requests_for("/simple/pip/")
    assert fast.requests_for(f"/packages/{SAMPLE_WHEEL}")


def test_pip_mirror_table_shows_unreachable(
    indexes: tuple[HttpTestServer, HttpTestServer, str],
    isolated_pip: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fast, _, dead = indexes
    monkeypatch.setenv("PIP_INDEX_URL", fast.url("/simple"))
    monkeypatch.setenv("COLUMNS", "200")
    assert run_cli(["pip-mirror", "--no-defaults", "--pip", PIP_CMD, "--mirror", dead]) == 0
    out = capsys.readouterr().out
    assert "unreachable" in out
    assert "already uses the fastest" in out


def test_write_to_a_path_sets_trusted_host_for_plain_http(
    indexes: tuple[HttpTestServer, HttpTestServer, str],
    isolated_pip: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fast, slow, _ = indexes
    monkeypatch.setenv("PIP_INDEX_URL", slow.url("/simple"))
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\ntimeout = 60\ntrusted-host = other.example\n")
    args = ["pip-mirror", "--json", "--no-defaults", "--pip", PIP_CMD]
    assert run_cli([*args, "--mirror", fast.url("/simple"), "--write", str(conf)]) == 0
    assert json.loads(capsys.readouterr().out)["written"] == str(conf)
    parser = configparser.ConfigParser()
    parser.read(conf)
    assert parser.get("global", "index-url") == fast.url("/simple")
    assert parser.get("global", "trusted-host").split() == ["other.example", "127.0.0.1"]
    assert parser.get("global", "timeout") == "60"


def test_write_user_uses_pips_own_configuration(
    indexes: tuple[HttpTestServer, HttpTestServer, str],
    isolated_pip: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fast, slow, _ = indexes
    monkeypatch.delenv("PIP_CONFIG_FILE")
    monkeypatch.setenv("PIP_INDEX_URL", slow.url("/simple"))
    args = ["pip-mirror", "--json", "--no-defaults", "--pip", PIP_CMD]
    assert run_cli([*args, "--mirror", fast.url("/simple"), "--write", "user"]) == 0
    written = Path(json.loads(capsys.readouterr().out)["written"])
    assert written.is_relative_to(isolated_pip)
    parser = configparser.ConfigParser()
    parser.read(written)
    assert parser.get("global", "index-url") == fast.url("/simple")
    assert parser.get("global", "trusted-host") == "127.0.0.1"
    # pip itself now reports it.
    monkeypatch.delenv("PIP_INDEX_URL")
    assert current_index(PIP) == (fast.url("/simple"), "pip configuration")


def test_current_index_from_pip_configuration_and_default(
    isolated_pip: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    conf = tmp_path / "c.conf"
    conf.write_text("[global]\nindex-url = http://mirror.test/simple\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert current_index(PIP) == ("http://mirror.test/simple", "pip configuration")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    url, source = current_index(PIP)
    assert source == "pip default"
    assert url is not None and url.startswith("https://")
    assert url == pip_default_index(PIP)


def test_config_parsing_and_precedence() -> None:
    text = "global.index-url='https://a/simple'\ninstall.index-url='https://b/simple'\nnoise\n"
    config = parse_config_list(text)
    assert config == {
        "global.index-url": "https://a/simple",
        "install.index-url": "https://b/simple",
    }
    assert index_from_config(config) == "https://b/simple"
    assert index_from_config({":env:.index-url": "https://e/simple", **config}) == (
        "https://e/simple"
    )
    assert index_from_config({}) is None


def test_mirror_list_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACQUIRED_PIP_MIRRORS", raising=False)
    defaults = mirror_list()
    assert any("tsinghua" in u for u in defaults)
    assert any("aliyun" in u for u in defaults)
    assert any("ustc" in u for u in defaults)
    monkeypatch.setenv("ACQUIRED_PIP_MIRRORS", "https://x/simple https://y/simple")
    f = tmp_path / "m.txt"
    f.write_text("# mine\nhttps://z/simple  # near\n\n")
    assert mirror_list(["https://w/simple"], mirrors_file=f) == [
        "https://x/simple",
        "https://y/simple",
        "https://z/simple",
        "https://w/simple",
    ]
    assert mirror_list(defaults=False) == []


def test_ranking_is_pure() -> None:
    results = [
        IndexResult("http://dead", error="connection refused"),
        IndexResult("http://slow", latency=0.01, throughput=1e5),
        IndexResult("http://far", latency=0.5, throughput=1e8),
        IndexResult("http://near", latency=0.01, throughput=5e7),
    ]
    ranked = rank_indexes(results)
    assert [r.url for r in ranked] == ["http://near", "http://far", "http://slow", "http://dead"]
    assert [r.rank for r in ranked] == [1, 2, 3, 4]
    assert estimate(results[1]) == pytest.approx(20 * 0.01 + 50_000_000 / 1e5)
    assert estimate(results[0]) is None


def test_wheel_links() -> None:
    page = '<a href="../../packages/a-1-py3-none-any.whl#sha256=ab">a</a><a href="a-1.tar.gz">s</a>'
    assert wheel_links(page, "http://h/simple/a/") == ["http://h/packages/a-1-py3-none-any.whl"]


def test_prefetch_wheels_uses_the_best_index(
    indexes: tuple[HttpTestServer, HttpTestServer, str], isolated_pip: Path, tmp_path: Path
) -> None:
    fast, slow, dead = indexes
    target = tmp_path / "wheelhouse"
    result = prefetch_wheels(
        ["tinypkg==1.0"], target, [dead, slow.url("/simple"), fast.url("/simple")]
    )
    assert result.index_url == fast.url("/simple")
    assert [p.name for p in result.files] == ["tinypkg-1.0-py3-none-any.whl"]
    assert [r.url for r in result.ranking][-1] == dead
    assert fast.requests_for("/packages/tinypkg-1.0-py3-none-any.whl")
    assert not slow.requests_for("/packages/tinypkg-1.0-py3-none-any.whl")


def test_prefetch_wheels_reports_pip_failures(
    indexes: tuple[HttpTestServer, HttpTestServer, str], isolated_pip: Path, tmp_path: Path
) -> None:
    fast, _, _ = indexes
    with pytest.raises(PipDownloadFailed) as info:
        prefetch_wheels(["nosuchpkg==1.0"], tmp_path / "w", [fast.url("/simple")])
    assert info.value.code == "pip.download_failed"
    assert "nosuchpkg" in str(info.value.details["output"])


def test_prefetch_wheels_without_a_reachable_index(
    indexes: tuple[HttpTestServer, HttpTestServer, str], isolated_pip: Path, tmp_path: Path
) -> None:
    _, _, dead = indexes
    with pytest.raises(NoReachableIndex) as info:
        prefetch_wheels(["tinypkg"], tmp_path / "w", [dead])
    assert dead in str(info.value)
    assert info.value.retryable
