"""Settings of `proca-stats serve`, checked so that a mistake ends in one clear line."""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import psycopg
from psycopg.conninfo import conninfo_to_dict

DEFAULT_LISTEN = "127.0.0.1:50051"
DEFAULT_SYNC_INTERVAL_MS = 60_000  # Proca's SYNC_INTERVAL
DEFAULT_SYNC_TIMEOUT_MS = 300_000
DEFAULT_MAX_WATCHERS = 1000
DEFAULT_SLOW_SYNC_INTERVAL_MS = 600_000  # closed and ignored campaigns
DEFAULT_FULL_SYNC_INTERVAL_MS = 3_600_000  # the safety net
DEFAULT_CHANGE_OVERLAP_MS = 60_000  # how late a change may commit after its updated_at
DEFAULT_FANOUT_CHANNEL = "proca_stats"
DEFAULT_DATA_DIR = platformdirs.user_data_path("proca-stats")
CHANGE_FEEDS = ("auto", "logical", "updated-at")
DEFAULT_FEED_SLOT = "proca_stats"
DEFAULT_STATE_DIR = platformdirs.user_state_path("proca-stats")


class ConfigError(ValueError):
    """A setting a person gave is wrong; the message says which and why."""


@dataclass(frozen=True)
class Limits:
    """Caps that keep a flood of Increments with fresh ids or strings from exhausting memory.

    Figures loaded from the database are never capped: the database is trusted.
    """

    max_campaigns: int = 100_000
    max_keys_per_map: int = 10_000
    max_request_bytes: int = 64 * 1024
    # Action ids remembered between two syncs (retries count once; see StatsStore).
    max_action_ids: int = 100_000


@dataclass(frozen=True)
class TlsKeys:
    """PEM contents, read when the settings are checked, so that a wrong path ends the
    command before anything (an embedded PostgreSQL, say) has started."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate it signed


@dataclass(frozen=True)
class ServeConfig:
    listen: str = DEFAULT_LISTEN
    database_url: str | None = None  # None: run on the embedded PostgreSQL
    sync_interval_ms: int = DEFAULT_SYNC_INTERVAL_MS  # between refreshes of live campaigns
    sync_timeout_ms: int = DEFAULT_SYNC_TIMEOUT_MS
    slow_sync_interval_ms: int = DEFAULT_SLOW_SYNC_INTERVAL_MS
    full_sync_interval_ms: int = DEFAULT_FULL_SYNC_INTERVAL_MS
    change_overlap_ms: int = DEFAULT_CHANGE_OVERLAP_MS
    data_dir: Path = DEFAULT_DATA_DIR
    tls: TlsKeys | None = None
    tokens: tuple[bytes, ...] = ()  # bearer tokens; none: no RPC needs one
    protect_reads: bool = False
    limits: Limits = Limits()
    metrics_listen: str | None = None
    workers: int = 16  # threads answering unary RPCs
    max_watchers: int = DEFAULT_MAX_WATCHERS  # open WatchStats streams, each holding a thread
    connect_timeout: float = 10.0  # seconds to wait for a database connection
    fanout: bool = False  # share Increments with other replicas through LISTEN/NOTIFY
    fanout_channel: str = DEFAULT_FANOUT_CHANNEL
    sync_database_url: str | None = None  # None: the sync reads the database it listens on
    change_feed: str = "auto"  # one of CHANGE_FEEDS
    feed_slot: str = DEFAULT_FEED_SLOT
    state_dir: Path | None = None  # None: no state file (`serve` gives the per-user one)


def parse_change_feed(value: str) -> str:
    if value not in CHANGE_FEEDS:
        raise ConfigError(f"--change-feed: expected auto, logical or updated-at, got {value!r}")
    return value


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); port 0 asks the system for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{flag}: expected HOST:PORT such as {DEFAULT_LISTEN}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{flag}: {host} is not an IPv6 address") from None
    return host, int(port_text)


def check_can_listen(host: str, port: int) -> None:
    """Fail early, with the system's reason, when HOST:PORT cannot be bound.

    gRPC would find out too, but only after printing a core log line that
    points at GRPC_VERBOSITY rather than at the cause.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as error:
        raise ConfigError(f"--listen: cannot listen on {host}:{port}: {error.strerror}") from None


def check_database_url(url: str, flag: str = "--database-url") -> str:
    """A PostgreSQL URL or conninfo string that libpq can parse (reachability is checked later)."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"{flag}: not a PostgreSQL URL ({error})") from None
    return url


CHANNEL = re.compile(r"[a-z_][a-z0-9_]*")


def parse_channel(flag: str, value: str) -> str:
    """A LISTEN/NOTIFY channel: a lower-case PostgreSQL identifier of at most 63 bytes.

    Lower case only, so that `LISTEN name` typed unquoted in psql (which folds
    to lower case) hears the same channel as the servers.
    """
    if not CHANNEL.fullmatch(value) or len(value) > 63:
        raise ConfigError(
            f"{flag}: expected a PostgreSQL identifier (lower-case letters, digits and _, "
            f"not starting with a digit, at most 63 characters), got {value!r}"
        )
    return value


def parse_switch(name: str, value: str | None) -> bool:
    """An on/off environment variable: 1, true or yes; 0, false, no or empty."""
    text = (value or "").strip().lower()
    if text in ("1", "true", "yes"):
        return True
    if text in ("", "0", "false", "no"):
        return False
    raise ConfigError(f"{name}: expected 1 or 0, got {value!r}")


# gRPC's integer options and PostgreSQL's statement_timeout (in ms) stop here, and
# thread waits of more milliseconds overflow.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a proto int64 field, such as an id


def parse_count(
    flag: str,
    value: str,
    minimum: int = 1,
    unit: str = "a whole number",
    maximum: int | None = None,
) -> int:
    """A whole number from ``minimum`` to ``maximum`` (a cap, a size, a duration in ``unit``)."""
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{flag}: expected {unit}, got {value!r}") from None
    if count < minimum:
        raise ConfigError(f"{flag}: must be >= {minimum}, got {count}")
    if maximum is not None and count > maximum:
        raise ConfigError(f"{flag}: must be <= {maximum}, got {count}")
    return count


def parse_milliseconds(flag: str, value: str) -> int:
    """A duration in whole milliseconds, 0 to INT32_MAX (almost 25 days)."""
    return parse_count(flag, value, minimum=0, unit="milliseconds", maximum=INT32_MAX)


def parse_seconds(value: str, *, zero: bool = False) -> float:
    """A duration in seconds for a flag's argparse type: finite, more than 0 (or 0 too when
    ``zero``), at most what a thread can wait; nan or inf would end inside a wait, in an
    OverflowError or never.

    The ValueError says what was wrong without naming the flag: argparse adds it.
    """
    bound = ">= 0" if zero else "> 0"
    expected = f"expected seconds, a number {bound} and <= {threading.TIMEOUT_MAX:.0f}"
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{expected}, got {value!r}") from None
    if not (0 <= seconds <= threading.TIMEOUT_MAX) or (seconds == 0 and not zero):
        raise ValueError(f"{expected}, got {value!r}")
    return seconds


def parse_int64(value: str) -> int:
    """An id for a flag's argparse type: a whole number that fits a proto int64 field
    (protobuf would raise on more). Whether it is > 0 is the server's to say.

    The ValueError says what was wrong without naming the flag: argparse adds it.
    """
    expected = f"expected a 64-bit whole number (at most {INT64_MAX})"
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{expected}, got {value!r}") from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(f"{expected}, got {value!r}")
    return number


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except OSError:
        return False
    return all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


def check_exposure(host: str, tls: TlsKeys | None, insecure: bool) -> None:
    """Plaintext is for loopback only, unless the operator says --insecure on purpose."""
    if tls is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"--listen: {host} is reachable from other machines; "
            "give --tls-cert and --tls-key, or --insecure to serve plaintext anyway"
        )
