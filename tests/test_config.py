"""Configuration: defaults, path resolution, sizes, percent reserve, and clear errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acquired.daemon.config import (
    Config,
    ConfigError,
    ConfigNotFound,
    ConfigUnreadable,
    DiskReserve,
)
from acquired.daemon.errors import describe
from acquired.daemon.units import format_loc, parse_host_port, parse_rate, parse_size


def write(tmp_path: Path, text: str, name: str = "acquired.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults and paths -----------------------------------------------------------------


def test_defaults_live_under_var_of_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.load(None)
    assert config.data_root == tmp_path / "var/data"
    assert config.inbox == tmp_path / "var/inbox"
    assert config.state_dir == tmp_path / "var/state"
    assert config.runtime_dir == tmp_path / "var/run"
    assert config.socket_path == tmp_path / "var/run/acquired.sock"
    assert config.db_path == tmp_path / "var/state/acquired.db"
    assert config.log_level == "info"
    assert config.max_concurrent_files == 4
    assert config.bandwidth_limit == 0
    assert config.http.connections_per_file == 8
    assert config.http.min_speed == 1024
    assert config.torrent.listen_port == 6881
    assert config.torrent.upnp is False and config.torrent.natpmp is False
    assert config.torrent.dht is True
    assert config.unpack.max_bytes == 2 * 2**40
    assert config.metrics.listen is None and config.metrics.address is None
    assert config.reserve_bytes(10**15) == 2**30


def test_base_dir_overrides_cwd_for_defaults(tmp_path: Path) -> None:
    config = Config.load(None, base_dir=tmp_path)
    assert config.data_root == tmp_path / "var/data"


def test_relative_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        etc,
        'data_root = "data"\ninbox = "/srv/inbox"\n[unpack]\nwatch_dirs = ["w", "/abs"]\n',
    )
    config = Config.load(path)
    assert config.data_root == etc / "data"
    assert config.inbox == Path("/srv/inbox")
    assert config.state_dir == etc / "var/state"  # a default is relative to the file too
    assert config.unpack.watch_dirs == [etc / "w", Path("/abs")]
    assert Config.load(path, base_dir=tmp_path).data_root == tmp_path / "data"


def test_a_full_file_loads(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
log_level = "DEBUG"
max_concurrent_files = 16
bandwidth_limit = "50MB/s"
disk_reserve = "5%"

[http]
connections_per_file = 4
min_speed = "1K"

[torrent]
listen_port = 51413
listen_interfaces = ["127.0.0.1"]
dht_bootstrap = ["[::1]:6881", "127.0.0.1:6881"]
academic_torrents_url = "https://academictorrents.com/"

[unpack]
max_bytes = "1.5TiB"

[metrics]
listen = "127.0.0.1:9469"
""",
    )
    config = Config.load(path)
    assert config.log_level == "debug"
    assert config.bandwidth_limit == 50_000_000
    assert config.disk_reserve == DiskReserve(percent=5.0)
    assert config.reserve_bytes(1000) == 50
    assert config.http.connections_per_file == 4
    assert config.http.min_speed == 1000
    assert config.torrent.listen_interfaces_setting == "127.0.0.1:51413"
    assert config.torrent.academic_torrents_url == "https://academictorrents.com"
    assert config.unpack.max_bytes == int(1.5 * 2**40)
    assert config.metrics.address == ("127.0.0.1", 9469)
    # What the file says survives a JSON dump (for `acquirectl show-config` and the like).
    dumped = config.model_dump(mode="json")
    assert dumped["disk_reserve"] == "5%"
    assert Config.from_mapping({**dumped, "disk_reserve": "5%"}).disk_reserve.percent == 5.0


def test_the_example_config_loads_and_matches_the_defaults(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "examples" / "acquired.toml"
    config = Config.load(example, base_dir=tmp_path)
    assert config == Config.load(None, base_dir=tmp_path)


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        (
            "[http]\nconnections_per_file = 0\n",
            "http.connections_per_file",
            "0 — must be between 1 and 64",
        ),
        ("[http]\nconnections_per_file = 65\n", "http.connections_per_file", "between 1 and 64"),
        ("max_concurrent_files = 0\n", "max_concurrent_files", "between 1 and 1024"),
        ("[torent]\nlisten_port = 1\n", "torent", "unknown key 'torent' (did you mean 'torrent'?)"),
        (
            "[http]\nconections_per_file = 2\n",
            "http.conections_per_file",
            "did you mean 'connections_per_file'?",
        ),
        ("zzz = 1\n", "zzz", "unknown key 'zzz' (known keys: data_root"),
        (
            'log_level = "verbose"\n',
            "log_level",
            "must be one of 'debug', 'info', 'warning' or 'error'",
        ),
        ('disk_reserve = "60%"\n', "disk_reserve", "between 0% and 50%"),
        ('disk_reserve = "lots"\n', "disk_reserve", "or a percentage of the filesystem"),
        ("disk_reserve = -5\n", "disk_reserve", "must not be negative"),
        ('bandwidth_limit = "10Mb"\n', "bandwidth_limit", "write 'B' for bytes, e.g. '10MB'"),
        ('bandwidth_limit = "fast"\n', "bandwidth_limit", "is not a size"),
        ("[torrent]\nlisten_port = 70000\n", "torrent.listen_port", "between 0 and 65535"),
        (
            '[torrent]\nlisten_interfaces = ["0.0.0.0:6881"]\n',
            "torrent.listen_interfaces[0]",
            "the port is listen_port",
        ),
        ('[torrent]\ndht_bootstrap = ["router"]\n', "torrent.dht_bootstrap[0]", "has no port"),
        (
            '[torrent]\nacademic_torrents_url = "ftp://x"\n',
            "torrent.academic_torrents_url",
            "not an http(s) URL",
        ),
        (
            '[metrics]\nlisten = "127.0.0.1:99999"\n',
            "metrics.listen",
            "port 99999 must be between 1 and 65535",
        ),
        ("[http]\nconnect_timeout = 0\n", "http.connect_timeout", "must be more than 0"),
        ('[http]\nmax_tries = "many"\n', "http.max_tries", "must be a whole number"),
        ("[torrent]\ndht = 3\n", "torrent.dht", "must be true or false"),
        ('[torrent]\ndht = "yes"\n', "torrent.dht", "must be true or false"),
        ("max_concurrent_files = true\n", "max_concurrent_files", "must be a whole number"),
        ('max_concurrent_files = "4"\n', "max_concurrent_files", "must be a whole number"),
        ("[http]\nread_timeout = true\n", "http.read_timeout", "must be a number"),
        ("http = 3\n", "http", "must be a table"),
        ("data_root = 3\n", "data_root", "must be a path string"),
    ],
)
def test_bad_values_name_the_file_the_key_and_the_reason(
    tmp_path: Path, text: str, key: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    exc = info.value
    assert exc.code == "config.invalid"
    assert [k for k, _ in exc.errors] == [key]
    line = str(exc)
    assert line.startswith(f"{path}: {key}: ")
    assert message in line
    assert exc.hint
    assert describe(exc).details["errors"][0]["key"] == key


def test_every_bad_key_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "max_concurrent_files = 0\n[http]\nread_timeout = -1\nfoo = 1\n")
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert sorted(k for k, _ in info.value.errors) == [
        "http.foo",
        "http.read_timeout",
        "max_concurrent_files",
    ]
    assert len(str(info.value).splitlines()) == 3


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "info"\nmax_concurrent_files = = 3\n')
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value).startswith(f"{path}: invalid TOML")
    assert "line 2" in str(info.value) and "column" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigNotFound) as info:
        Config.load(tmp_path / "nope.toml")
    assert isinstance(info.value, ConfigError)
    assert info.value.code == "config.not_found"
    assert str(tmp_path / "nope.toml") in str(info.value)
    assert "--config" in info.value.hint


def test_a_folder_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigUnreadable, match="is a folder"):
        Config.load(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    path.chmod(0)
    with pytest.raises(ConfigUnreadable, match="cannot read"):
        Config.load(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "acquired.toml"
    path.write_bytes(b'log_level = "\xff"\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        Config.load(path)


# --- sizes, rates, reserve ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (5000000, 5000000),
        ("5000000", 5000000),
        ("1K", 1000),
        ("1k", 1000),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("1Ki", 1024),
        ("1kiB", 1024),
        ("10G", 10 * 1000**3),
        ("10GB", 10 * 1000**3),
        ("10GiB", 10 * 2**30),
        ("1.5GiB", 3 * 2**29),
        ("1.5 MB", 1_500_000),
        (" 2TiB ", 2 * 2**40),
        ("1E", 10**18),
        ("3B", 3),
        (".5K", 500),
        ("0.3B", 0),
    ],
)
def test_parse_size(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    "text", ["", "G", "1X", "1 i", "1iB", "-1", -1, "1Gb", "1kb", "1e3", True, None, [1], "nan"]
)
def test_parse_size_refuses(text: object) -> None:
    with pytest.raises(ValueError, match=r"size|bits|negative"):
        parse_size(text)


def test_parse_rate_accepts_per_second() -> None:
    assert parse_rate("50M/s") == 50_000_000
    assert parse_rate("50MB/s") == 50_000_000
    assert parse_rate("1.5GiB /s") == 3 * 2**29
    assert parse_rate(7) == 7


@given(st.integers(min_value=0, max_value=2**62), st.sampled_from(["", "B"]))
def test_plain_numbers_are_bytes(n: int, suffix: str) -> None:
    assert parse_size(f"{n}{suffix}") == n
    assert parse_size(n) == n


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(list(enumerate("KMGTPE", start=1))),
    st.booleans(),
)
def test_units_are_si_or_iec_never_mixed(n: int, prefix: tuple[int, str], iec: bool) -> None:
    power, letter = prefix
    unit = f"{letter}iB" if iec else f"{letter}B"
    assert parse_size(f"{n}{unit}") == n * (1024 if iec else 1000) ** power


def test_disk_reserve_bytes_and_percent() -> None:
    assert DiskReserve.parse("10G").resolve(10**15) == 10 * 10**9
    assert DiskReserve.parse(5000000).resolve(1) == 5000000
    assert DiskReserve.parse("5%").resolve(2000) == 100
    assert DiskReserve.parse(" 0.5 % ").resolve(10**6) == 5000
    assert DiskReserve.parse("0%").resolve(10**6) == 0
    assert DiskReserve.parse("50%").resolve(10) == 5
    assert str(DiskReserve.parse("5%")) == "5%"
    for bad in ("51%", "-1%", "x%", "%"):
        with pytest.raises(ValueError):
            DiskReserve.parse(bad)


def test_reserve_from_config_percent_vs_bytes() -> None:
    assert Config.from_mapping({"disk_reserve": "10%"}).reserve_bytes(1000) == 100
    assert Config.from_mapping({"disk_reserve": "1GiB"}).reserve_bytes(1000) == 2**30


def test_host_port() -> None:
    assert parse_host_port("127.0.0.1:9469") == ("127.0.0.1", 9469)
    assert parse_host_port("[::1]:80") == ("::1", 80)
    assert parse_host_port("router.bittorrent.com:6881") == ("router.bittorrent.com", 6881)
    for bad in ("::1:80", "host", ":80", "host:", "host:x", "[::1]80", "[zz]:80", "a b:1", "h:0"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


def test_format_loc() -> None:
    assert format_loc(("files", 2, "sources", "mirrors", 0)) == "files[2].sources.mirrors[0]"
    assert format_loc(()) == ""
    assert format_loc(("http", "min_speed")) == "http.min_speed"
    assert format_loc(("files", 0, "")) == 'files[0].""'
    assert format_loc(("a.b", "c d")) == '"a.b"."c d"'


def test_json_schema_is_generated() -> None:
    schema = Config.model_json_schema()
    assert schema["properties"]["disk_reserve"]["default"] == 2**30
    assert schema["additionalProperties"] is False


def test_assignment_is_validated() -> None:
    config = Config()
    with pytest.raises(ValueError):
        config.max_concurrent_files = 0


def test_torrent_engine_options_fit_the_engine_settings() -> None:
    from acquired.sources.torrent.settings import TorrentSettings as EngineSettings

    config = Config.from_mapping({"torrent": {"listen_port": 0, "seed_time": 0}})
    engine = EngineSettings(**config.torrent.engine_options())
    assert engine.listen_port == 0
    assert engine.seed_time is None  # 0 in the config file means "no time limit"
    assert engine.listen_interfaces == ("0.0.0.0", "[::]")
    assert engine.dht_bootstrap == tuple(config.torrent.dht_bootstrap)
    timed = Config.from_mapping({"torrent": {"seed_time": 60}}).torrent.engine_options()
    assert EngineSettings(**timed).seed_time == 60
