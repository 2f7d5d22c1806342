"""pip index ranking: the index pip uses now plus known public mirrors, measured by the
latency of a simple-index page and the throughput of a wheel download.

Used by ``acquirectl pip-mirror`` (print the ranking, optionally write pip's
configuration) and by the daemon for a manifest's ``[pip]`` section
(``prefetch_wheels``: rank the indexes, then ``pip download`` from the best one).
"""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests

from acquired.sources.errors import SourceError
from acquired.sources.http.model import USER_AGENT
from acquired.sources.http.probe import _reason

# Public PyPI mirrors users commonly switch to. Ranked together with the index pip uses
# now (read from pip, never assumed here); override with --mirror / --mirrors-file.
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://pypi.tuna.tsinghua.edu.cn/simple",
    "https://mirrors.aliyun.com/pypi/simple",
    "https://pypi.mirrors.ustc.edu.cn/simple",
    "https://mirrors.cloud.tencent.com/pypi/simple",
    "https://repo.huaweicloud.com/repository/pypi/simple",
    "https://mirror.sjtu.edu.cn/pypi/web/simple",
    "https://mirrors.bfsu.edu.cn/pypi/web/simple",
)

# A project every PyPI-compatible index carries, with wheels.
DEFAULT_PROJECT = "pip"
DEFAULT_WHEEL_SAMPLE = 2 << 20
MIRRORS_ENV = "ACQUIRED_PIP_MIRRORS"


class PipError(SourceError):
    """Base of pip-related failures."""

    code = "pip.error"
    hint = "See the message; pip's own output is in the details."


class PipNotFound(PipError):
    """No pip to run for the chosen Python."""

    code = "pip.not_found"
    hint = "Install pip for this Python (python3 -m ensurepip) or pass --pip."


class NoReachableIndex(PipError):
    """No package index answered."""

    code = "pip.no_index"
    hint = "None of the package indexes answered; check the network or list an index_url."
    retryable = True


class PipDownloadFailed(PipError):
    """``pip download`` failed for the requirements."""

    code = "pip.download_failed"
    hint = "Check the requirement names and versions; pip's output is in the details."
    retryable = True


class PipConfigWriteFailed(PipError):
    """pip's configuration file could not be written."""

    code = "pip.config_write_failed"
    hint = "Writing the global configuration needs root; use --write user or a path."


# -- the index pip uses now -----------------------------------------------------------------
def pip_command(pip: str | None = None) -> list[str]:
    """The pip to ask and configure: ``pip`` (a command line) if given, else ``pip`` on
    PATH (what the user runs), else this Python's ``-m pip``."""
    if pip:
        return shlex.split(pip)
    found = shutil.which("pip") or shutil.which("pip3")
    if found:
        return [found]
    return [sys.executable, "-m", "pip"]


def _run_pip(
    cmd: Sequence[str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [*cmd, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    except FileNotFoundError as exc:
        raise PipNotFound(f"pip not found: {' '.join(cmd)}", command=list(cmd)) from exc
    except subprocess.TimeoutExpired as exc:
        raise PipError(f"{' '.join(cmd)} {' '.join(args)} timed out") from exc


def parse_config_list(text: str) -> dict[str, str]:
    """``pip config list`` output (``section.key='value'`` lines) as a dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def index_from_config(config: dict[str, str]) -> str | None:
    """The index-url pip would use for ``download``/``install`` given its merged config:
    the environment first, then command sections, then ``global``."""
    for key in (":env:.index-url", "download.index-url", "install.index-url", "global.index-url"):
        if config.get(key):
            return config[key].split()[0]
    return None


_DEFAULT_RE = re.compile(r"Base URL of the Python Package Index\s*\(default\s+(\S+?)\)")


def pip_default_index(cmd: Sequence[str]) -> str | None:
    """pip's built-in default index, as pip itself documents it in ``download --help``."""
    proc = _run_pip(cmd, "download", "--help")
    match = _DEFAULT_RE.search(" ".join(proc.stdout.split()))
    return match.group(1) if match else None


def current_index(cmd: Sequence[str] | None = None) -> tuple[str | None, str]:
    """The index pip uses now and where that comes from (``PIP_INDEX_URL``, pip's
    configuration, or pip's default)."""
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.split()[0], "PIP_INDEX_URL"
    cmd = list(cmd or pip_command())
    proc = _run_pip(cmd, "config", "list")
    if proc.returncode == 0:
        configured = index_from_config(parse_config_list(proc.stdout))
        if configured:
            return configured, "pip configuration"
    default = pip_default_index(cmd)
    return default, "pip default"


def mirror_list(
    extra: Sequence[str] = (),
    *,
    mirrors_file: Path | None = None,
    defaults: bool = True,
) -> list[str]:
    """The public mirrors to compare: the shipped defaults (or ``$ACQUIRED_PIP_MIRRORS``,
    space separated, instead), then ``mirrors_file`` (one URL per line, ``#`` comments),
    then ``extra``."""
    urls: list[str] = []
    if defaults:
        env = os.environ.get(MIRRORS_ENV)
        urls += env.split() if env else list(DEFAULT_MIRRORS)
    if mirrors_file is not None:
        for raw in mirrors_file.read_text().splitlines():
            url = raw.split("#", 1)[0].strip()
            if url:
                urls.append(url)
    urls += list(extra)
    return urls


# -- measuring ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IndexResult:
    """One index as measured: page latency, wheel throughput, or why it failed."""

    url: str
    latency: float | None = None  # seconds to the first byte of the project's page
    throughput: float | None = None  # bytes/s of the wheel download
    wheel: str | None = None  # the wheel that was sampled
    error: str | None = None
    current: bool = False  # the index pip uses now
    source: str | None = None  # for the current one: where pip gets it from
    rank: int = 0
    seconds: float | None = None  # the ranking estimate

    @property
    def reachable(self) -> bool:
        """Whether the index answered the probe."""
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        """The result as a JSON-able dict, as ``acquirectl pip-mirror --json`` prints it."""
        return {
            "rank": self.rank,
            "url": self.url,
            "current": self.current,
            "source": self.source,
            "reachable": self.reachable,
            "latency": self.latency,
            "throughput": self.throughput,
            "estimate": self.seconds,
            "wheel": self.wheel,
            "error": self.error,
        }


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.links.append(value)


def wheel_links(page: str, base: str) -> list[str]:
    """Absolute URLs of the ``.whl`` files a PEP 503 page links to (fragments dropped)."""
    parser = _Links()
    parser.feed(page)
    out = []
    for href in parser.links:
        url = urljoin(base, href).split("#", 1)[0]
        if urlsplit(url).path.endswith(".whl"):
            out.append(url)
    return out


def measure_index(
    index_url: str,
    *,
    project: str = DEFAULT_PROJECT,
    sample_bytes: int = DEFAULT_WHEEL_SAMPLE,
    timeout: float = 10.0,
) -> IndexResult:
    """Latency of ``<index>/<project>/`` and throughput of one of its wheels. Never
    raises for network trouble: the result carries ``error``."""
    page_url = index_url.rstrip("/") + f"/{project}/"
    headers = {"User-Agent": USER_AGENT, "Accept": "text/html"}
    with requests.Session() as session:
        try:
            started = time.monotonic()
            with session.get(page_url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code != 200:
                    return IndexResult(index_url, error=f"HTTP {r.status_code} for {page_url}")
                body = bytearray()
                latency: float | None = None
                for chunk in r.iter_content(64 * 1024):
                    if latency is None:
                        latency = time.monotonic() - started
                    body += chunk
                if latency is None:
                    latency = time.monotonic() - started
                page = body.decode(r.encoding or "utf-8", "replace")
                base = r.url
        except requests.RequestException as exc:
            return IndexResult(index_url, error=_reason(exc))
        wheels = wheel_links(page, base)
        if not wheels:
            return IndexResult(index_url, latency=latency, error=f"no wheels listed on {page_url}")
        # The last link is usually the newest release.
        wheel = wheels[-1]
        try:
            started = time.monotonic()
            got = 0
            first_at: float | None = None
            with session.get(wheel, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code != 200:
                    return IndexResult(
                        index_url, latency=latency, error=f"HTTP {r.status_code} for {wheel}"
                    )
                for chunk in r.iter_content(64 * 1024):
                    if first_at is None:
                        first_at = time.monotonic()
                    got += len(chunk)
                    if got >= sample_bytes or time.monotonic() - started > timeout:
                        break
            elapsed = time.monotonic() - (first_at or started)
        except requests.RequestException as exc:
            return IndexResult(index_url, latency=latency, wheel=wheel, error=_reason(exc))
    throughput = got / elapsed if elapsed > 0 else float(got) * 1e6
    return IndexResult(index_url, latency=latency, throughput=throughput, wheel=wheel)


def estimate(result: IndexResult, *, pages: int = 20, payload: int = 50_000_000) -> float | None:
    """Seconds for a typical resolve-and-download: ``pages`` index pages (latency bound)
    plus ``payload`` bytes of wheels (throughput bound). None when unreachable."""
    if not result.reachable or result.latency is None:
        return None
    if not result.throughput:
        return float("inf")
    return pages * result.latency + payload / result.throughput


def rank_indexes(results: Sequence[IndexResult], **weights: int) -> list[IndexResult]:
    """Reachable indexes by ``estimate`` (fastest first), then the unreachable ones in
    their given order; ``rank`` and ``seconds`` filled in."""
    scored = [replace(r, seconds=estimate(r, **weights)) for r in results]
    reachable = sorted(
        (r for r in scored if r.seconds is not None),
        key=lambda r: (r.seconds, r.latency or 0.0),
    )
    unreachable = [r for r in scored if r.seconds is None]
    return [replace(r, rank=i + 1) for i, r in enumerate([*reachable, *unreachable])]


@dataclass
class Ranking:
    """The outcome of ``rank_pip_indexes``."""

    results: list[IndexResult]
    current: str | None
    current_source: str
    project: str = DEFAULT_PROJECT
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> IndexResult | None:
        """The fastest reachable index, if any."""
        return self.results[0] if self.results and self.results[0].reachable else None


def _normal(url: str) -> str:
    return url.rstrip("/")


def rank_pip_indexes(
    candidates: Sequence[str],
    *,
    current: tuple[str | None, str] | None = None,
    project: str = DEFAULT_PROJECT,
    sample_bytes: int = DEFAULT_WHEEL_SAMPLE,
    timeout: float = 10.0,
    workers: int = 8,
) -> Ranking:
    """Measure the current index (``current``, else asked from pip) and ``candidates`` at
    the same time and rank them."""
    cur_url, cur_source = current if current is not None else current_index()
    urls: list[str] = []
    seen: set[str] = set()
    for url in [*([cur_url] if cur_url else []), *candidates]:
        if _normal(url) not in seen:
            seen.add(_normal(url))
            urls.append(url)
    notes = []
    if cur_url is None:
        notes.append("could not tell which index pip uses now")
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(urls) or 1))) as pool:
        measured = list(
            pool.map(
                lambda u: measure_index(
                    u, project=project, sample_bytes=sample_bytes, timeout=timeout
                ),
                urls,
            )
        )
    marked = [
        replace(r, current=True, source=cur_source)
        if cur_url and _normal(r.url) == _normal(cur_url)
        else r
        for r in measured
    ]
    return Ranking(rank_indexes(marked), cur_url, cur_source, project, notes)


# -- writing pip's configuration ------------------------------------------------------------
def _plain_http_host(index_url: str) -> str | None:
    parts = urlsplit(index_url)
    return parts.hostname if parts.scheme == "http" else None


def write_pip_config(where: str, index_url: str, pip: Sequence[str] | None = None) -> Path:
    """Make ``index_url`` pip's index: ``where`` is ``user``, ``global`` (pip's own
    files, written with ``pip config``) or a path to a pip.conf. ``trusted-host`` is
    added only for plain http. Returns the file written."""
    host = _plain_http_host(index_url)
    if where in ("user", "global"):
        cmd = list(pip or pip_command())
        trusted: list[str] = []
        if host:
            got = _run_pip(cmd, f"--{where}", "config", "get", "global.trusted-host")
            trusted = got.stdout.split() if got.returncode == 0 else []
            if host not in trusted:
                trusted.append(host)
        written: Path | None = None
        settings = [("global.index-url", index_url)]
        if host:
            settings.append(("global.trusted-host", " ".join(trusted)))
        for key, value in settings:
            proc = _run_pip(cmd, "config", f"--{where}", "set", key, value)
            if proc.returncode != 0:
                raise PipConfigWriteFailed(
                    f"pip config --{where} set {key} failed: "
                    f"{(proc.stderr or proc.stdout).strip()}",
                    where=where,
                    stderr=proc.stderr[-2000:],
                )
            match = re.search(r"Writing to (.+)", proc.stdout + proc.stderr)
            if match:
                written = Path(match.group(1).strip())
        return written or Path(where)
    path = Path(where).expanduser()
    config = configparser.ConfigParser()
    if path.exists():
        config.read(path)
    if not config.has_section("global"):
        config.add_section("global")
    config.set("global", "index-url", index_url)
    if host:
        existing = config.get("global", "trusted-host", fallback="").split()
        if host not in existing:
            existing.append(host)
        config.set("global", "trusted-host", " ".join(existing))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w") as f:
            config.write(f)
        os.replace(tmp, path)
    except OSError as exc:
        raise PipConfigWriteFailed(f"cannot write {path}: {exc}", path=str(path)) from exc
    return path


# -- prefetching wheels for a manifest ------------------------------------------------------
@dataclass(frozen=True)
class PrefetchResult:
    """What ``prefetch_wheels`` did: the index used, the ranking, the files in target."""

    index_url: str
    ranking: list[IndexResult]
    files: list[Path]


def prefetch_wheels(
    requirements: list[str],
    target: Path,
    index_urls: list[str],
    *,
    python: str = sys.executable,
    project: str = DEFAULT_PROJECT,
    timeout: float = 10.0,
    pip_timeout: float = 3600.0,
) -> PrefetchResult:
    """Download ``requirements`` (and their dependencies) into ``target`` with ``pip
    download`` from the best of ``index_urls`` (when empty: the index pip uses now and
    the default public mirrors). The indexes are ranked like ``acquirectl pip-mirror``.

    Raises NoReachableIndex when no index answers, PipDownloadFailed when pip fails."""
    pip = [python, "-m", "pip"]
    if index_urls:
        ranking = rank_pip_indexes(
            index_urls[1:], current=(index_urls[0], "manifest"), project=project, timeout=timeout
        )
    else:
        ranking = rank_pip_indexes(
            mirror_list(), current=current_index(pip), project=project, timeout=timeout
        )
    best = ranking.best
    if best is None:
        raise NoReachableIndex(
            "no package index answered: "
            + "; ".join(f"{r.url}: {r.error}" for r in ranking.results),
            indexes={r.url: r.error for r in ranking.results},
        )
    target.mkdir(parents=True, exist_ok=True)
    args = [
        "download",
        "--dest",
        str(target),
        "--index-url",
        best.url,
        "--no-input",
        "--progress-bar",
        "off",
    ]
    host = _plain_http_host(best.url)
    if host:
        args += ["--trusted-host", host]
    proc = _run_pip(pip, *args, "--", *requirements, timeout=pip_timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise PipDownloadFailed(
            f"pip download from {best.url} failed: " + (tail[-1] if tail else "no output"),
            index_url=best.url,
            requirements=requirements,
            output="\n".join(tail),
        )
    files = sorted(p for p in target.iterdir() if p.is_file())
    return PrefetchResult(best.url, ranking.results, files)
