"""A real systemd to test the service under, on a machine whose PID 1 is not systemd.

Debian's systemd runs as PID 1 of a ``systemd-nspawn --boot`` container:

* ``debootstrap`` builds a minimal Debian tree once, cached under ``CACHE`` (default
  ``/var/cache/acquired-systest``, outside the repository);
* a venv is built on the host with Debian's ``/usr/bin/python3`` (the tree has the same
  interpreter) holding acquired's dependencies (cached, keyed by pyproject.toml) and the
  checkout's code (reinstalled from a copy of the sources whenever they change); it is
  bound read-only into the container at the same path, and so is the checkout;
* the container runs with ``--volatile=overlay`` (the cached tree stays unchanged, writes
  go to a tmpfs), ``--private-network`` (loopback only), ``--register=no --keep-unit``
  (no host systemd or D-Bus needed), in a private mount namespace with a tmpfs over
  ``/run/systemd`` and in cgroups of its own, so nothing of the host is touched;
* the host drives it with ``nsenter --target <container PID 1> --all --root``.

Cache builds are serialised with a lock file, and the whole session holds it too (the
venv is reinstalled in place), so concurrent runs wait for each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ACQUIRED_SYSTEST_CACHE", "/var/cache/acquired-systest"))
SUITE = os.environ.get("ACQUIRED_SYSTEST_SUITE", "bookworm")
HOST_PYTHON = "/usr/bin/python3"
TREE_PACKAGES = "systemd,systemd-sysv,dbus,python3"
HOST_PACKAGES = (
    "debootstrap",
    "systemd-container",
    "util-linux",
    "procps",
    "libsystemd-dev",
    "pkg-config",
    "gcc",
    "python3-dev",
    "python3-venv",
)
CT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Units whose timers or gettys would only add noise to a short-lived test boot.
MASKED_UNITS = (
    "console-getty.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "dpkg-db-backup.timer",
    "fstrim.timer",
)


class HarnessError(RuntimeError):
    """The test machinery (not the product) failed; the message says where to look."""


def log(message: str) -> None:
    """Progress lines on stderr (pytest shows them with -s, or for a failing test)."""
    print(f"[systest {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(
    cmd: Sequence[str],
    *,
    timeout: float,
    log_to: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a host command; on failure raise with the tail of its output."""
    out: TextIO | int = subprocess.PIPE
    handle = None
    if log_to is not None:
        handle = log_to.open("a")
        out = handle
    try:
        proc = subprocess.run(
            list(cmd),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    finally:
        if handle is not None:
            handle.close()
    if proc.returncode != 0:
        tail = proc.stdout if log_to is None else log_to.read_text()[-3000:]
        raise HarnessError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{tail[-3000:]}")


def default_mirror() -> str:
    """The first Debian URI this machine's apt is configured with."""
    sources = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for path in sources:
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    with contextlib.suppress(FileNotFoundError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"]:
                return next(p for p in parts[1:] if not p.startswith("["))
    return "http://deb.debian.org/debian"


def ensure_host_packages() -> None:
    """apt-get install what the harness needs on the host, when missing."""
    missing = []
    for package in HOST_PACKAGES:
        probe = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if "install ok installed" not in probe.stdout:
            missing.append(package)
    if not missing:
        return
    log(f"apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    _run(["apt-get", *lock, "update", "-qq"], timeout=900, env=env)
    _run(
        ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing],
        timeout=1800,
        env=env,
    )


@contextlib.contextmanager
def cache_lock(timeout: float = 1800) -> Iterator[None]:
    """Hold the cache's lock file (other runs wait; a stuck one is reported)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise HarnessError(
                        f"{CACHE}/.lock held for {timeout}s by another run"
                    ) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_tree() -> Path:
    """The cached Debian tree (built with debootstrap the first time, ~60 s)."""
    tree = CACHE / f"tree-{SUITE}"
    stamp = CACHE / f"tree-{SUITE}.ok"
    want = f"{SUITE} {TREE_PACKAGES}"
    if tree.is_dir() and stamp.is_file() and stamp.read_text().strip() == want:
        return tree
    partial = CACHE / f"tree-{SUITE}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    stamp.unlink(missing_ok=True)
    build_log = CACHE / "debootstrap.log"
    build_log.write_text("")
    mirror = os.environ.get("ACQUIRED_SYSTEST_MIRROR") or default_mirror()
    log(f"building {tree} with debootstrap ({SUITE}, {mirror}); log {build_log}")
    started = time.monotonic()
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={TREE_PACKAGES}",
            SUITE,
            str(partial),
            mirror,
        ],
        timeout=1500,
        log_to=build_log,
    )
    _run(["systemctl", f"--root={partial}", "mask", *MASKED_UNITS], timeout=60)
    _run(["systemctl", f"--root={partial}", "set-default", "multi-user.target"], timeout=60)
    # debootstrap copies the host's hostname; without it nspawn uses the machine name
    (partial / "etc/hostname").unlink(missing_ok=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for item in (partial / junk).glob("*"):
            if item.is_file():
                item.unlink()
    partial.rename(tree)
    stamp.write_text(want + "\n")
    log(f"tree built in {time.monotonic() - started:.0f}s")
    return tree


def _dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return list(project["dependencies"])


# The folders that make up the acquired namespace package (pyproject's package-dir).
PACKAGE_DIRS = ("common", "daemon", "sources", "unpack")


def _source_digest() -> str:
    digest = hashlib.sha256()
    for top in ("pyproject.toml", "README.md", *PACKAGE_DIRS):
        base = REPO / top
        paths = [base] if base.is_file() else sorted(base.rglob("*.py"))
        for path in paths:
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv() -> Path:
    """The container's venv: dependencies cached, acquired reinstalled when it changed."""
    venv = CACHE / f"venv-{SUITE}"
    deps = _dependencies()
    deps_want = json.dumps([os.path.realpath(HOST_PYTHON), deps, "setuptools>=77"])
    deps_stamp = CACHE / f"venv-{SUITE}.deps"
    code_stamp = CACHE / f"venv-{SUITE}.code"
    pip_log = CACHE / "pip.log"
    python = venv / "bin/python"
    if not (python.exists() and deps_stamp.is_file() and deps_stamp.read_text() == deps_want):
        log(f"building venv {venv} with {HOST_PYTHON} (dependencies from PyPI); log {pip_log}")
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        deps_stamp.unlink(missing_ok=True)
        code_stamp.unlink(missing_ok=True)
        pip_log.write_text("")
        _run([HOST_PYTHON, "-m", "venv", str(venv)], timeout=300, log_to=pip_log)
        pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "-q", "--upgrade", "pip"], timeout=600, log_to=pip_log)
        _run(
            [*pip, "install", "-q", "setuptools>=77", "wheel", *deps],
            timeout=1800,
            log_to=pip_log,
        )
        deps_stamp.write_text(deps_want)
        log(f"venv built in {time.monotonic() - started:.0f}s")
    code_want = _source_digest()
    if not (code_stamp.is_file() and code_stamp.read_text() == code_want):
        log("installing the checkout's code into the container venv")
        # from a copy: building in place would write build/ and *.egg-info into the
        # shared working tree
        with tempfile.TemporaryDirectory(prefix="acquired-src-") as tmp:
            for top in ("pyproject.toml", "README.md"):
                shutil.copy2(REPO / top, Path(tmp) / top)
            for top in PACKAGE_DIRS:
                shutil.copytree(
                    REPO / top, Path(tmp) / top, ignore=shutil.ignore_patterns("__pycache__")
                )
            _run(
                [
                    str(python),
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--no-build-isolation",
                    "--force-reinstall",
                    tmp,
                ],
                timeout=600,
                log_to=pip_log,
            )
        code_stamp.write_text(code_want)
    return venv


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return True
    return state == "Z"


def _nspid_is_init(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return False
    for line in status.splitlines():
        if line.startswith("NSpid:"):
            return line.split()[-1] == "1" and comm == "systemd"
    return False


@dataclass
class Result:
    """What a command in the container did."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        """Raise when the command failed, with its output."""
        if self.returncode != 0:
            raise HarnessError(
                f"in container: {shlex.join(self.args)} -> {self.returncode}\n"
                f"{self.stdout[-2000:]}{self.stderr[-2000:]}"
            )
        return self


@dataclass
class Container:
    """One booted container; ``run`` executes commands in it."""

    tree: Path
    binds: list[str]
    machine: str = field(default_factory=lambda: f"acqtest-{os.getpid()}")
    boot_timeout: float = 90.0
    max_lifetime: int = 1800
    workdir: Path = field(init=False)
    launcher: subprocess.Popen[bytes] | None = field(default=None, init=False)
    pid: int | None = field(default=None, init=False)
    pidns: str | None = field(default=None, init=False)
    cgroups: list[Path] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.machine}-", dir=CACHE))

    # ------------------------------------------------------------ lifecycle
    def _make_cgroups(self) -> None:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            mount = None
            if controllers == "name=systemd":
                mount = Path("/sys/fs/cgroup/systemd")
            elif controllers == "":
                root = Path("/sys/fs/cgroup")
                fstype = subprocess.run(
                    ["stat", "-fc", "%T", str(root)], capture_output=True, text=True, check=False
                ).stdout.strip()
                if fstype == "cgroup2fs":
                    mount = root
                elif (root / "unified").is_dir():
                    mount = root / "unified"
            if mount is None or not (mount / path.lstrip("/")).is_dir():
                continue
            group = mount / path.lstrip("/") / self.machine
            group.mkdir()
            self.cgroups.append(group)
        if not self.cgroups:
            raise HarnessError("found no systemd cgroup hierarchy for the container")

    def boot(self) -> None:
        """Start the container and wait until its systemd is "running"."""
        self._make_cgroups()
        run_tmpfs = "/run/systemd" if Path("/run/systemd").is_dir() else "/run"
        nspawn = [
            "systemd-nspawn",
            "--quiet",
            "--boot",
            f"--directory={self.tree}",
            "--volatile=overlay",
            f"--machine={self.machine}",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--console=passive",
            "--link-journal=no",
            "--resolv-conf=off",
            "--timezone=off",
            *[f"--bind-ro={b}" for b in self.binds],
        ]
        script = self.workdir / "launch.sh"
        script.write_text(
            "#!/bin/sh\nset -e\n"
            + "".join(f'echo $$ > "{g}/cgroup.procs"\n' for g in self.cgroups)
            + f"mount -t tmpfs -o mode=0755,size=4m acquired-systest {run_tmpfs}\n"
            + f"exec {shlex.join(nspawn)}\n"
        )
        log(f"booting {self.machine} (log {self.workdir}/nspawn.log)")
        started = time.monotonic()
        with (self.workdir / "nspawn.log").open("wb") as out:
            self.launcher = subprocess.Popen(
                [
                    "timeout",
                    "-s",
                    "TERM",
                    "-k",
                    "30",
                    str(self.max_lifetime),
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/sh",
                    str(script),
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = started + self.boot_timeout
        while self.pid is None:
            self._check_alive("during boot")
            if time.monotonic() > deadline:
                raise HarnessError(f"container PID 1 not found in {self.boot_timeout}s")
            for pid in self._descendants(self.launcher.pid):
                if _nspid_is_init(pid):
                    self.pid = pid
                    break
            else:
                time.sleep(0.1)
        self.pidns = os.readlink(f"/proc/{self.pid}/ns/pid")
        state = ""
        while time.monotonic() < deadline:
            state = self.run(["systemctl", "is-system-running"], timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                break
            self._check_alive("during boot")
            time.sleep(0.2)
        if state != "running":
            failed = self.run(["systemctl", "--failed", "--no-pager"]).stdout
            raise HarnessError(f"container systemd is {state!r}, not running:\n{failed}")
        log(f"container up in {time.monotonic() - started:.1f}s (PID 1 = host PID {self.pid})")

    def _descendants(self, pid: int) -> list[int]:
        found, todo = [], [pid]
        while todo:
            for kid in _children(todo.pop()):
                found.append(kid)
                todo.append(kid)
        return found

    def _check_alive(self, when: str) -> None:
        if self.launcher is not None and self.launcher.poll() is not None:
            output = (self.workdir / "nspawn.log").read_text(errors="replace")[-3000:]
            raise HarnessError(f"systemd-nspawn exited {when}:\n{output}")

    def shutdown(self) -> list[int]:
        """Orderly poweroff (SIGKILL after 30 s); returns PIDs of the container still
        alive afterwards (an empty list is the expected outcome)."""
        left: list[int] = []
        if self.launcher is not None:
            if self.launcher.poll() is None:
                self.launcher.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.launcher.wait(30)
            if self.launcher.poll() is None or (self.pid and not _exited(self.pid)):
                log("container did not stop in 30 s: SIGKILL to its PID 1 and the launcher")
                if self.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.launcher.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.launcher.wait(10)
            if self.pidns:
                for _ in range(25):
                    left = [
                        int(p.name)
                        for p in Path("/proc").iterdir()
                        if p.name.isdigit() and _readlink(p / "ns/pid") == self.pidns
                    ]
                    if not left:
                        break
                    time.sleep(0.2)
        for group in reversed(self.cgroups):
            for sub in sorted(group.rglob("*"), key=lambda p: -len(p.parts)):
                if sub.is_dir():
                    with contextlib.suppress(OSError):
                        sub.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()
        return left

    def cleanup(self, keep: bool) -> None:
        """Remove the per-run folder unless ``keep`` (logs of a failed run)."""
        if keep:
            log(f"per-run files kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------ driving it
    def run(
        self,
        args: Sequence[str],
        *,
        input: str | bytes | None = None,
        timeout: float = 60,
        env: dict[str, str] | None = None,
    ) -> Result:
        """Run ``args`` in the container (all its namespaces, its root), as root."""
        if self.pid is None:
            raise HarnessError("container is not running")
        base_env = {
            "PATH": CT_PATH,
            "LANG": "C.UTF-8",
            "SYSTEMD_PAGER": "",
            "SYSTEMD_COLORS": "0",
            **(env or {}),
        }
        cmd = [
            "nsenter",
            "--target",
            str(self.pid),
            "--all",
            "--root",
            "--wd",
            "--",
            "/usr/bin/env",
            "-i",
            *[f"{k}={v}" for k, v in base_env.items()],
            *args,
        ]
        data = input.encode() if isinstance(input, str) else input
        try:
            proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"in container: {shlex.join(args)} timed out ({timeout}s)") from exc
        return Result(
            list(args),
            proc.returncode,
            proc.stdout.decode(errors="replace"),
            proc.stderr.decode(errors="replace"),
        )

    def put(self, data: str | bytes, dest: str, mode: str = "0644") -> None:
        """Write ``data`` to the file ``dest`` in the container."""
        self.run(
            [
                "/bin/sh",
                "-c",
                'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
                "sh",
                dest,
                mode,
            ],
            input=data,
        ).check()

    def systemctl(self, *args: str, timeout: float = 60) -> Result:
        """``systemctl ARGS`` in the container."""
        return self.run(["systemctl", *args], timeout=timeout)

    def prop(self, unit: str, name: str) -> str:
        """One property of a unit (``systemctl show --value -p NAME UNIT``)."""
        return self.systemctl("show", "--value", "-p", name, unit).check().stdout.strip()

    def journal(self, *args: str) -> list[dict[str, Any]]:
        """``journalctl -o json ARGS`` as a list of entries."""
        out = self.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def wait(
        self,
        what: str,
        predicate: Any,
        timeout: float = 60,
        interval: float = 0.2,
    ) -> Any:
        """Poll ``predicate()`` until it returns something true; raise naming ``what``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            self._check_alive(f"while waiting for {what}")
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def why_not_runnable() -> str | None:
    """The reason the system tests cannot run here, or None when they can."""
    if os.environ.get("ACQUIRED_SKIP_SYSTEM") == "1":
        return "ACQUIRED_SKIP_SYSTEM=1"
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, debootstrap, cgroups)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no /sys/fs/cgroup"
    return None
