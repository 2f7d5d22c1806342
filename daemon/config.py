"""The daemon's configuration: ``acquired.toml``, validated by pydantic.

Every key has a default, so ``acquired`` started without a configuration file keeps its
data, inbox, state and socket under ``./var`` of the folder it was started in. Relative
paths in a configuration file are relative to that file's folder. Sizes and rates accept
units (see :mod:`acquired.daemon.units`): ``bandwidth_limit = "50M"`` is 50 * 10**6
bytes/s, ``max_bytes = "2TiB"`` is 2 * 2**40 bytes. ``disk_reserve`` is a size or a
percentage of the filesystem (``"5%"``, at most 50%).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from acquired.common.redact import DEFAULT_QUERY_PARAMS

from .cluster_config import ClusterSettings
from .errors import DaemonError
from .units import (
    Bool,
    Float,
    Int,
    describe_validation_error,
    parse_host_port,
    parse_rate,
    parse_size,
)

__all__ = [
    "Config",
    "ConfigError",
    "ConfigNotFound",
    "ConfigUnreadable",
    "DiskReserve",
    "FoldersOverlap",
    "HttpSettings",
    "MetricsSettings",
    "Rate",
    "Size",
    "TorrentSettings",
    "UnpackSettings",
    "UrllistDaemonSettings",
]

_SIZE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9.]+\s*([kKmMgGtTpPeE][iI]?B?)?\s*$"},
    ],
    "description": "bytes, or a number with a unit: K M G T (x1000) or KiB MiB GiB TiB (x1024)",
}
_RATE_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "integer", "minimum": 0},
        {"type": "string", "pattern": r"^\s*[0-9.]+\s*([kKmMgGtTpPeE][iI]?B?)?\s*(/s)?\s*$"},
    ],
    "description": "bytes per second, or a number with a unit such as '50M' or '1.5GiB/s'",
}

Size = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(_SIZE_SCHEMA)]
"""A size in bytes; accepts ``5000000``, ``"10G"``, ``"1.5GiB"``."""

Rate = Annotated[int, BeforeValidator(parse_rate), WithJsonSchema(_RATE_SCHEMA)]
"""A rate in bytes per second; accepts ``1024``, ``"50M"``, ``"50MB/s"``."""


@dataclass(frozen=True)
class DiskReserve:
    """Free space kept untouched on the data root's filesystem: bytes or a percentage."""

    size: int = 0
    percent: float | None = None

    MAX_PERCENT: ClassVar[float] = 50.0

    @classmethod
    def parse(cls, value: object) -> DiskReserve:
        """``"1GiB"``, ``5000000`` or ``"5%"`` (0-50 %). Raises ``ValueError``."""
        if isinstance(value, DiskReserve):
            return value
        if isinstance(value, str) and value.strip().endswith("%"):
            text = value.strip()[:-1].strip()
            try:
                percent = float(text)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a percentage — write e.g. '5%' (0 to 50)"
                ) from None
            if not 0.0 <= percent <= cls.MAX_PERCENT:
                raise ValueError(f"{value!r} — a reserve must be between 0% and 50%")
            return cls(percent=percent)
        try:
            return cls(size=parse_size(value))
        except ValueError as exc:
            raise ValueError(f"{exc}; or a percentage of the filesystem such as '5%'") from None

    def resolve(self, total_bytes: int) -> int:
        """The reserve in bytes on a filesystem of ``total_bytes``."""
        if self.percent is not None:
            return int(total_bytes * self.percent / 100.0)
        return self.size

    def __str__(self) -> str:
        if self.percent is not None:
            return f"{self.percent:g}%"
        return str(self.size)

    def to_json(self) -> int | str:
        """What the configuration file would say: bytes as an int, a percent as ``"5%"``."""
        return str(self) if self.percent is not None else self.size


DiskReserveField = Annotated[
    DiskReserve,
    PlainValidator(DiskReserve.parse),
    PlainSerializer(DiskReserve.to_json, return_type=int | str),
    WithJsonSchema(
        {
            "anyOf": [
                _SIZE_SCHEMA,
                {"type": "string", "pattern": r"^\s*[0-9.]+\s*%\s*$"},
            ],
            "description": "bytes, a size such as '10G', or a percentage such as '5%'",
        }
    ),
]


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL — write e.g. 'https://example.org'")
    return value.rstrip("/")


def _check_host_port(value: str) -> str:
    parse_host_port(value)
    return value


def _check_interface(value: str) -> str:
    """A listen interface for libtorrent: an address (``[::]`` for IPv6) or a device name."""
    text = value.strip()
    if not text or any(c in text for c in ", \t"):
        raise ValueError(
            f"{value!r} is not an interface — write an address such as '0.0.0.0' or "
            "'[::]', or a device name such as 'eth0'"
        )
    if text.startswith("["):
        if not text.endswith("]"):
            raise ValueError(f"{value!r}: an IPv6 address must end with ']', e.g. '[::]'")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv6 address in brackets") from None
    elif ":" in text:
        raise ValueError(
            f"{value!r}: write an IPv6 address in brackets ('[::]'); the port is listen_port"
        )
    return text


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class HttpSettings(_Strict):
    """Defaults of the HTTP engine (``[http]``); a manifest may lower connections."""

    connections_per_file: Int = Field(default=8, ge=1, le=64)
    per_host_connections: Int = Field(default=16, ge=1, le=256)
    connect_timeout: Float = Field(default=10.0, gt=0)
    read_timeout: Float = Field(default=30.0, gt=0)
    min_speed: Size = Field(default=1024, ge=0)
    min_speed_window: Float = Field(default=30.0, gt=0)
    max_tries: Int = Field(default=6, ge=1, le=1000)
    checkpoint_interval: Float = Field(default=2.0, gt=0)


class TorrentSettings(_Strict):
    """The BitTorrent session (``[torrent]``): fixed ports, no UPnP/NAT-PMP by default."""

    listen_port: Int = Field(default=6881, ge=0, le=65535)
    listen_interfaces: list[Annotated[str, BeforeValidator(_check_interface)]] = Field(
        default_factory=lambda: ["0.0.0.0", "[::]"]
    )
    upnp: Bool = False
    natpmp: Bool = False
    lsd: Bool = False
    dht: Bool = True
    dht_bootstrap: list[Annotated[str, BeforeValidator(_check_host_port)]] = Field(
        default_factory=lambda: [
            "router.bittorrent.com:6881",
            "router.utorrent.com:6881",
            "dht.transmissionbt.com:6881",
        ]
    )
    academic_torrents_url: Annotated[str, BeforeValidator(_check_http_url)] = (
        "https://academictorrents.com"
    )
    metadata_timeout: Float = Field(default=300.0, gt=0)
    stall_window: Float = Field(default=300.0, gt=0)
    seed_ratio: Float = Field(default=1.0, ge=0)
    seed_time: Float = Field(default=0.0, ge=0)
    connections_limit: Int = Field(default=200, ge=1, le=65535)
    probe_window: Float = Field(default=10.0, ge=0)
    """Seconds a swarm is watched before the daemon chooses between it and the mirrors
    of a file that has both."""

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for ``acquired.sources.torrent.TorrentSettings``.

        Same names; lists become tuples, and ``seed_time = 0`` (no time limit here)
        becomes the engine's ``None`` (for the engine, 0 means "do not seed").
        """
        return {
            "listen_port": self.listen_port,
            "listen_interfaces": tuple(self.listen_interfaces),
            "upnp": self.upnp,
            "natpmp": self.natpmp,
            "lsd": self.lsd,
            "dht": self.dht,
            "dht_bootstrap": tuple(self.dht_bootstrap),
            "connections_limit": self.connections_limit,
            "academic_torrents_url": self.academic_torrents_url,
            "metadata_timeout": self.metadata_timeout,
            "stall_window": self.stall_window,
            "seed_ratio": self.seed_ratio,
            "seed_time": self.seed_time if self.seed_time > 0 else None,
        }

    @property
    def listen_interfaces_setting(self) -> str:
        """libtorrent's ``listen_interfaces`` string: ``"0.0.0.0:6881,[::]:6881"``."""
        return ",".join(f"{i}:{self.listen_port}" for i in self.listen_interfaces)


class UnpackSettings(_Strict):
    """Limits of the unpack pipeline (``[unpack]``)."""

    workers: Int = Field(default=0, ge=0, le=1024)
    max_ratio: Float = Field(default=200.0, gt=0)
    max_bytes: Size = Field(default=2 * 1024**4, ge=0)
    max_entries: Int = Field(default=10_000_000, ge=1)
    watch_dirs: list[Path] = Field(default_factory=list)
    delete_archives: Bool = False


class UrllistDaemonSettings(_Strict):
    """URL-list jobs (``[urllist]``)."""

    workers: Int = Field(default=0, ge=0, le=1024)
    """Worker processes per running URL-list job, each driving many transfers; 0 = one
    per core the daemon may run on."""


class MetricsSettings(_Strict):
    """Prometheus exporter (``[metrics]``): off unless ``listen = "127.0.0.1:9469"``."""

    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @property
    def address(self) -> tuple[str, int] | None:
        """``(host, port)`` to bind, or None when metrics are off."""
        return None if self.listen is None else parse_host_port(self.listen)


class Config(_Strict):
    """The whole configuration. Build it with :meth:`Config.load`."""

    data_root: Path = Path("var/data")
    inbox: Path = Path("var/inbox")
    state_dir: Path = Path("var/state")
    runtime_dir: Path = Path("var/run")
    inbox_max_manifest_size: Size = Field(default=64 * 1024**2, ge=1024)
    """``[inbox] max_manifest_size``: a larger file in the inbox is rejected unread."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    redact_query_params: list[str] = Field(default_factory=lambda: list(DEFAULT_QUERY_PARAMS))
    max_concurrent_files: Int = Field(default=4, ge=1, le=1024)
    bandwidth_limit: Rate = Field(default=0, ge=0)
    disk_reserve: DiskReserveField = Field(
        default=DiskReserve(size=1024**3), json_schema_extra={"default": 1024**3}
    )
    http: HttpSettings = Field(default_factory=HttpSettings)
    torrent: TorrentSettings = Field(default_factory=TorrentSettings)
    unpack: UnpackSettings = Field(default_factory=UnpackSettings)
    urllist: UrllistDaemonSettings = Field(default_factory=UrllistDaemonSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    cluster: ClusterSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _inbox_table(cls, data: object) -> object:
        """``[inbox]`` as a table: ``path`` and ``max_manifest_size``; a plain
        ``inbox = "PATH"`` stays accepted."""
        if not isinstance(data, dict) or not isinstance(data.get("inbox"), dict):
            return data
        data = dict(data)
        table = dict(data.pop("inbox"))
        if "path" in table:
            data["inbox"] = table.pop("path")
        if "max_manifest_size" in table:
            data["inbox_max_manifest_size"] = table.pop("max_manifest_size")
        for key, value in table.items():
            data[f"inbox.{key}"] = value  # reported as an unknown key
        return data

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @classmethod
    def load(cls, path: Path | None, *, base_dir: Path | None = None) -> Config:
        """Read ``path`` (TOML), or the embedded defaults when ``path`` is None.

        Relative paths (data_root, inbox, state_dir, runtime_dir, unpack.watch_dirs) are
        made absolute against ``base_dir``, which defaults to the current directory when
        ``path`` is None and to the configuration file's folder otherwise. Raises
        :class:`ConfigError` (or a subclass) naming the file and every bad key.
        """
        if path is None:
            config = cls()._absolute(base_dir if base_dir is not None else Path.cwd())
            config.check_folders("<defaults>")
            return config
        path = Path(path).expanduser()
        source = str(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigNotFound(f"{source}: no such configuration file", source=source) from None
        except IsADirectoryError:
            raise ConfigUnreadable(
                f"{source}: is a folder, not a configuration file", source=source
            ) from None
        except OSError as exc:
            raise ConfigUnreadable(
                f"{source}: cannot read the configuration file: {exc.strerror}", source=source
            ) from None
        try:
            data = tomllib.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            raise ConfigError.from_errors(
                source, [("", f"not UTF-8 text (byte {exc.start}) — save it as UTF-8")]
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError.from_errors(source, [("", f"invalid TOML: {exc}")]) from None
        config = cls.from_mapping(data, source)
        config = config._absolute(base_dir if base_dir is not None else path.absolute().parent)
        config.check_folders(source)
        return config

    def check_folders(self, source: str = "<config>") -> None:
        """Refuse a data root that contains (or lies inside) the inbox, the state or the
        runtime folder: a dataset could then drop a manifest into the inbox, replace the
        live store or the control socket. Raises :class:`FoldersOverlap`."""
        data = _real(self.data_root)
        errors = []
        for key in ("inbox", "state_dir", "runtime_dir"):
            other = _real(getattr(self, key))
            if other == data or data in other.parents:
                how = "is" if other == data else "contains"
                errors.append(
                    (
                        "data_root",
                        f"{self.data_root} {how} {key} {getattr(self, key)} — datasets "
                        f"would be written into the {key}; keep the folders apart",
                    )
                )
            elif other in data.parents:
                errors.append(
                    (
                        "data_root",
                        f"{self.data_root} lies inside {key} {getattr(self, key)} — keep the "
                        "folders apart",
                    )
                )
        if errors:
            raise FoldersOverlap.from_errors(source, errors)

    @classmethod
    def from_mapping(cls, data: dict[str, Any], source: str = "<config>") -> Config:
        """Validate already-parsed keys; paths stay as given. Raises :class:`ConfigError`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError.from_errors(source, describe_validation_error(cls, exc)) from None

    def _absolute(self, base: Path) -> Config:
        def fix(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p).absolute()

        unpack = self.unpack.model_copy(
            update={"watch_dirs": [fix(p) for p in self.unpack.watch_dirs]}
        )
        return self.model_copy(
            update={
                "data_root": fix(self.data_root),
                "inbox": fix(self.inbox),
                "state_dir": fix(self.state_dir),
                "runtime_dir": fix(self.runtime_dir),
                "unpack": unpack,
                "cluster": self.cluster.resolved(base) if self.cluster else None,
            }
        )

    def reserve_bytes(self, total_bytes: int) -> int:
        """``disk_reserve`` in bytes for a filesystem of ``total_bytes``."""
        return self.disk_reserve.resolve(total_bytes)

    @property
    def socket_path(self) -> Path:
        """The control socket: ``runtime_dir / "acquired.sock"``."""
        return self.runtime_dir / "acquired.sock"

    @property
    def db_path(self) -> Path:
        """The job store: ``state_dir / "acquired.db"``."""
        return self.state_dir / "acquired.db"


class ConfigError(DaemonError):
    """The configuration file is invalid; the message names the file and each bad key."""

    code: ClassVar[str] = "config.invalid"
    hint: ClassVar[str] = (
        "Fix the keys named above in the configuration file (examples/acquired.toml lists "
        "every key with its default), then start the daemon again or send it SIGHUP."
    )

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        errors: list[tuple[str, str]] | None = None,
        **details: object,
    ) -> None:
        super().__init__(message, source=source, **details)
        self.source = source
        self.errors: list[tuple[str, str]] = list(errors or [])
        if self.errors:
            self.details["errors"] = [{"key": k, "message": m} for k, m in self.errors]

    @classmethod
    def from_errors(cls, source: str, errors: list[tuple[str, str]]) -> ConfigError:
        """One line per error: ``FILE: http.connections_per_file: 0 — must be ...``."""
        lines = [f"{source}: {key}: {msg}" if key else f"{source}: {msg}" for key, msg in errors]
        return cls("\n".join(lines), source=source, errors=errors)


class FoldersOverlap(ConfigError):
    """The data root overlaps the inbox, the state or the runtime folder."""

    code: ClassVar[str] = "config.folders_overlap"
    hint: ClassVar[str] = (
        "Give data_root a folder of its own, neither containing nor inside inbox, "
        "state_dir or runtime_dir (e.g. /srv/acquired/data beside /srv/acquired/inbox)."
    )


def _real(path: Path) -> Path:
    """``path`` with the links of its existing part resolved (it may not exist yet)."""
    return Path(os.path.realpath(path))


class ConfigNotFound(ConfigError):
    """The configuration file named on the command line does not exist."""

    code: ClassVar[str] = "config.not_found"
    hint: ClassVar[str] = (
        "Check the --config path, or start without --config to use the built-in defaults."
    )


class ConfigUnreadable(ConfigError):
    """The configuration file exists but cannot be read."""

    code: ClassVar[str] = "config.unreadable"
    hint: ClassVar[str] = "Check the file's permissions: the daemon's user must be able to read it."
