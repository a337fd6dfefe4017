"""Settings of `proca-stats serve`, checked so that a mistake ends in one clear line."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import platformdirs

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SYNC_INTERVAL_MS = 60_000  # Proca's SYNC_INTERVAL
DEFAULT_DATA_DIR = platformdirs.user_data_path("proca-stats")


class ConfigError(ValueError):
    """A setting a person gave is wrong; the message says which and why."""


@dataclass(frozen=True)
class ServeConfig:
    listen: str = DEFAULT_LISTEN
    database_url: str | None = None  # None: run on the embedded PostgreSQL
    sync_interval_ms: int = DEFAULT_SYNC_INTERVAL_MS
    data_dir: Path = DEFAULT_DATA_DIR
    workers: int = 16  # threads answering RPCs
    connect_timeout: float = 10.0  # seconds to wait for a database connection


def parse_listen(value: str) -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); port 0 asks the system for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"--listen: expected HOST:PORT such as {DEFAULT_LISTEN}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"--listen: {host} is not an IPv6 address") from None
    return host, int(port_text)


def parse_sync_interval(value: str) -> int:
    """Milliseconds between calculations; 0 calculates only at start."""
    try:
        interval = int(value)
    except ValueError:
        raise ConfigError(f"--sync-interval: expected milliseconds, got {value!r}") from None
    if interval < 0:
        raise ConfigError(f"--sync-interval: must be >= 0, got {interval}")
    return interval
