"""The ``[cluster]`` section of ``acquired.toml``: several daemons sharing URL-list jobs
through one Redis server.

::

    [cluster]
    redis_url = "redis://redis.lan:6379/0"   # or rediss:// (TLS), unix:///run/redis.sock
    node = "gpu-07"                          # default: the host name
    password_file = "/run/credentials/acquired.service/redis"   # LoadCredential=
    lease = 300                              # seconds a node may hold a shard unrenewed

Absent, every job runs on this node alone with the SQLite queue. A password written in
``redis_url`` is accepted but ``password_file`` is the way: the configuration file is
readable by more people than a credential.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .units import Float, Int

__all__ = ["ClusterSettings"]

_NODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_SCHEMES = ("redis", "rediss", "unix")


def _redis_url(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{value!r} — must be a URL string such as 'redis://host:6379/0'")
    text = value.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port — write it as redis://host:6379/0") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(
            f"scheme {parts.scheme or '(none)'!r} is not supported — use redis://host:6379/0, "
            "rediss://host:6380/0 (TLS) or unix:///path/to/redis.sock"
        )
    if parts.scheme == "unix":
        if not parts.path.startswith("/"):
            raise ValueError("a unix:// URL needs an absolute socket path")
    elif not parts.hostname:
        raise ValueError("has no host — write it as redis://host:6379/0")
    del port
    db = parts.path.strip("/")
    if parts.scheme != "unix" and db and not db.isdigit():
        raise ValueError(f"database {db!r} must be a number, e.g. redis://host:6379/0")
    return text


def _node(value: object) -> object:
    if isinstance(value, str) and not _NODE_RE.match(value):
        raise ValueError(
            f"{value!r} — a node name is letters, digits, '.', '_' and '-' (at most 63), "
            "starting with a letter or digit"
        )
    return value


class ClusterSettings(BaseModel):
    """``[cluster]``: where the fleet's Redis is and how this node appears in it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    redis_url: Annotated[str, BeforeValidator(_redis_url)]
    """redis://host:6379/0, rediss:// for TLS, or unix:///path/to/redis.sock."""
    node: Annotated[str | None, BeforeValidator(_node)] = None
    """This node's name in the fleet; default: the host name."""
    password_file: Path | None = None
    """A file holding the Redis password on one line (e.g. a systemd credential)."""
    lease: Float = Field(default=300.0, gt=0, le=86_400)
    """Seconds a shard may go unrenewed before another node takes it over."""
    max_deliveries: Int = Field(default=5, ge=1, le=100)
    """A shard delivered this many times without success is dead-lettered."""
    prefix: Annotated[str, BeforeValidator(_node)] = "acq"
    """The namespace of acquired's keys on the Redis server."""

    @property
    def node_name(self) -> str:
        """``node``, or the host name."""
        return self.node or socket.gethostname()

    def resolved(self, base: Path) -> ClusterSettings:
        """With ``password_file`` made absolute against ``base`` (the config's folder)."""
        if self.password_file is None:
            return self
        path = self.password_file.expanduser()
        if not path.is_absolute():
            path = (base / path).absolute()
        return self.model_copy(update={"password_file": path})
