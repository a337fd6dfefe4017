"""What a person may type, checked: each parser turns the text of a flag or an environment
variable into its value, or raises ConfigError with one line that names the flag.

The parsers of the settings table take ``(flag, text)``, so one table entry says both
which flag it is and how its text is read.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict


class ConfigError(ValueError):
    """A setting a person gave is wrong; the message says which and why."""


EXAMPLE_ADDRESS = "127.0.0.1:50051"  # shown in the answer to a malformed HOST:PORT

# gRPC's integer options and PostgreSQL's statement_timeout (in ms) stop here, and
# thread waits of more milliseconds overflow.
INT32_MAX = 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # a proto int64 field, such as an id


def parse_text(flag: str, text: str) -> str:
    """Text taken as it is (a path, an action type); whoever uses it checks it."""
    return text


def parse_path(flag: str, text: str) -> Path:
    return Path(text)


def parse_listen(value: str, flag: str = "--listen") -> tuple[str, int]:
    """Split HOST:PORT (IPv6 as [::1]:PORT); port 0 asks the system for a free one."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"{flag}: expected HOST:PORT such as {EXAMPLE_ADDRESS}, got {value!r}")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{flag}: {host} is not an IPv6 address") from None
    return host, int(port_text)


def parse_address(flag: str, text: str) -> str:
    """An address to listen on, HOST:PORT, kept as the text gRPC is given."""
    parse_listen(text, flag)
    return text


def parse_address_or_none(flag: str, text: str) -> str | None:
    """An address to listen on, or none when the text is empty (as a template leaves it)."""
    return parse_address(flag, text) if text else None


def parse_target(flag: str, text: str) -> str:
    """An address to call: anything gRPC can resolve (dns:///name, unix:path, HOST:PORT), so
    only a blank one is refused here."""
    if not text.strip():
        raise ConfigError(f"{flag}: expected HOST:PORT such as {EXAMPLE_ADDRESS}, got {text!r}")
    return text


def check_can_listen(host: str, port: int, flag: str = "--listen") -> None:
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
        raise ConfigError(f"{flag}: cannot listen on {host}:{port}: {error.strerror}") from None


ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")


def parse_origins(flag: str, text: str) -> tuple[str, ...]:
    """Web origins (scheme://host[:port], as browsers send them) or *, comma-separated."""
    origins = []
    for value in filter(str.strip, text.split(",")):
        origin = value.strip().rstrip("/").lower()
        found = ORIGIN.fullmatch(origin)
        if origin != "*" and not (found and int(found["port"] or 0) <= 65535):
            raise ConfigError(
                f"{flag}: expected an origin such as https://campaign.example.org "
                f"or http://127.0.0.1:8000, or *, got {value.strip()!r}"
            )
        origins.append(origin)
    return tuple(origins)


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


def check_database_url(flag: str, url: str) -> str:
    """A PostgreSQL URL or conninfo string that libpq can parse (reachability is checked later)."""
    try:
        conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"{flag}: not a PostgreSQL URL ({str(error).strip()})") from None
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


def one_of(choices: Sequence[str], *, any_case: bool = False) -> Callable[[str, str], str]:
    """A parser taking one of ``choices`` (in any case when ``any_case``), answering with the
    choice as it is written there."""

    def parse(flag: str, text: str) -> str:
        for choice in choices:
            if text == choice or (any_case and text.casefold() == choice.casefold()):
                return choice
        listed = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{flag}: invalid choice: {text!r} (choose from {listed})")

    return parse


CHANGE_FEEDS = ("auto", "logical", "updated-at")


def parse_change_feed(flag: str, text: str) -> str:
    """One of CHANGE_FEEDS, refused in words an operator reads at once (a hyphenated choice
    among quoted ones is easy to misread)."""
    if text not in CHANGE_FEEDS:
        raise ConfigError(f"{flag}: expected auto, logical or updated-at, got {text!r}")
    return text


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


def parse_seconds(flag: str, value: str, *, zero: bool = False) -> float:
    """A duration in seconds: finite, more than 0 (or 0 too when ``zero``), at most what a
    thread can wait; nan or inf would end inside a wait, in an OverflowError or never."""
    bound = ">= 0" if zero else "> 0"
    expected = f"{flag}: expected seconds, a number {bound} and <= {threading.TIMEOUT_MAX:.0f}"
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(f"{expected}, got {value!r}") from None
    if not (0 <= seconds <= threading.TIMEOUT_MAX) or (seconds == 0 and not zero):
        raise ConfigError(f"{expected}, got {value!r}")
    return seconds


def parse_wait(flag: str, value: str) -> float:
    """Seconds that may be 0 too: a wait that can be skipped."""
    return parse_seconds(flag, value, zero=True)


def parse_int64(flag: str, value: str) -> int:
    """An id: a whole number that fits a proto int64 field (protobuf would raise on more).
    Whether it is > 0 is the server's to say."""
    expected = f"{flag}: expected a 64-bit whole number (at most {INT64_MAX})"
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{expected}, got {value!r}") from None
    if not INT64_MIN <= number <= INT64_MAX:
        raise ConfigError(f"{expected}, got {value!r}")
    return number
