"""The files in systemd/, checked on the host (no container, no root needed): the unit
with systemd-analyze, the default configuration against the configuration model, the
install script staged with DESTDIR."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from acquired.daemon.config import Config

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")


def _unit_copy(tmp_path: Path) -> Path:
    # verify checks that ExecStart exists: point it at something that does
    text = (SYSTEMD / "acquired.service").read_text()
    unit = tmp_path / "acquired.service"
    unit.write_text(text.replace("/opt/acquired/venv/bin/acquired", "/bin/true"))
    return unit


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_verifies(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    out = subprocess.run(
        [str(ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout + out.stderr == ""


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_exposure_is_ok(tmp_path: Path) -> None:
    unit = _unit_copy(tmp_path)
    out = subprocess.run(
        [str(ANALYZE), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) <= 2.0
    assert match.group(2) == "OK"


def test_unit_essentials() -> None:
    text = (SYSTEMD / "acquired.service").read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["Restart"] == "on-failure"
    assert settings["WatchdogSec"] == "30s"
    assert "kill -HUP $$MAINPID" in settings["ExecReload"]
    assert settings["User"] == settings["Group"] == "acquired"
    assert settings["ProtectSystem"] == "strict"
    assert settings["CapabilityBoundingSet"] == ""
    # the configured data root and inbox are the writable paths of the sandbox
    config = Config.load(SYSTEMD / "acquired.toml")
    writable = Path(settings["ReadWritePaths"])
    assert config.data_root.is_relative_to(writable)
    assert config.inbox.is_relative_to(writable)
    assert config.state_dir == Path("/var/lib") / settings["StateDirectory"]
    assert config.runtime_dir == Path("/run") / settings["RuntimeDirectory"]
    tmpfiles = (SYSTEMD / "acquired.tmpfiles").read_text()
    assert re.search(rf"^d\s+{config.inbox}\s+2770\s+acquired\s+acquired", tmpfiles, re.M)
    assert re.search(rf"^d\s+{config.data_root}\s+", tmpfiles, re.M)


def test_default_config_documents_the_real_defaults() -> None:
    text = (SYSTEMD / "acquired.toml").read_text()
    # every commented-out "#key = value" line, switched on, must validate and must be
    # exactly the built-in default it claims to be
    enabled = re.sub(r"(?m)^#(\w+ = )", r"\1", text)
    data = tomllib.loads(enabled)
    config = Config.from_mapping(data)
    defaults = Config().model_dump(mode="json")
    dumped = config.model_dump(mode="json")
    commented = re.findall(r"(?m)^#(\w+) = ", text)
    assert len(commented) > 20
    section = None
    for line in text.splitlines():
        header = re.match(r"^\[(\w+)\]", line)
        if header:
            section = header.group(1)
            continue
        key = re.match(r"^#(\w+) = ", line)
        if key:
            name = key.group(1)
            want = defaults[section][name] if section else defaults[name]
            got = dumped[section][name] if section else dumped[name]
            assert got == want, f"[{section}] {name}: file says {got!r}, default is {want!r}"
    # and every key of the model is mentioned
    for name, value in defaults.items():
        if isinstance(value, dict):
            for sub in value:
                assert re.search(rf"(?m)^#?\s*{sub} = ", text), f"[{name}] {sub} missing"
        else:
            assert re.search(rf"(?m)^#?\s*{name} = ", text), f"{name} missing"


def _stage(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SYSTEMD / "install.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DESTDIR": str(tmp_path)},
    )


def test_install_script_stages_everything_and_keeps_a_config(tmp_path: Path) -> None:
    first = _stage(tmp_path, "--prefix", "/opt/acq", "--venv", "/opt/acq/env")
    assert first.returncode == 0, first.stderr
    unit = (tmp_path / "usr/local/lib/systemd/system/acquired.service").read_text()
    assert "ExecStart=/opt/acq/env/bin/acquired --config /etc/acquired/acquired.toml" in unit
    assert "Documentation=file:///opt/acq/README.md" in unit
    assert "/opt/acquired" not in unit
    for path in (
        "usr/local/lib/sysusers.d/acquired.conf",
        "usr/local/lib/tmpfiles.d/acquired.conf",
        "etc/acquired/acquired.toml",
        "opt/acq/README.md",
    ):
        assert (tmp_path / path).is_file(), path
    assert os.readlink(tmp_path / "usr/local/bin/acquirectl") == "/opt/acq/env/bin/acquirectl"
    config = tmp_path / "etc/acquired/acquired.toml"
    config.write_text(config.read_text() + 'log_level = "debug"\n')
    second = _stage(tmp_path, "--prefix", "/opt/acq", "--venv", "/opt/acq/env")
    assert second.returncode == 0, second.stderr
    assert config.read_text().endswith('log_level = "debug"\n')
    assert (tmp_path / "etc/acquired/acquired.toml.dist").read_text() == (
        SYSTEMD / "acquired.toml"
    ).read_text()
    assert "kept the existing" in second.stdout


def test_install_script_refuses_unknown_options(tmp_path: Path) -> None:
    out = _stage(tmp_path, "--frobnicate")
    assert out.returncode == 2
    assert "unknown option --frobnicate" in out.stderr
