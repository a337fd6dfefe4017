"""Every setting of the `proca-stats` command, in one table.

One entry per setting says all there is to say about it once: its flag, its environment
variable (and the older name still read), its default, the parser that turns text into
its value, its unit, its help and the commands that take it. Made from the table: the
command line's options and their --help (cli/options.py), ServeConfig's defaults, and the
README's Configuration table (``markdown_table``, which a test holds the README to).

A setting's value is the flag's, else the environment's (a ``PROCA_STATS_*`` name before
its alias), else the default. Settings that the environment can give are checked with
the rest of the configuration (exit status 1); the others are part of the command line's
syntax, refused like argparse's own mistakes (exit status 2).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

import platformdirs

from proca_stats.server.checks import (
    INT32_MAX,
    check_database_url,
    one_of,
    parse_address,
    parse_address_or_none,
    parse_change_feed,
    parse_channel,
    parse_count,
    parse_int64,
    parse_milliseconds,
    parse_origins,
    parse_path,
    parse_seconds,
    parse_switch,
    parse_target,
    parse_text,
    parse_wait,
)
from proca_stats.server.state.limits import Limits

T = TypeVar("T")

# Which commands take a setting.
ALL = ("all",)  # given before the command's name, or after it on any command
SERVE = ("serve",)
# The commands that use Proca's database.
DATABASE = ("serve", "db init", "db demo", "db drop-feed", "dump")
FEED = ("serve", "db init", "db drop-feed")  # the commands that name the change feed
CALLS = ("get", "increment", "health")  # the client commands: they call a running server

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LIMITS = Limits()
NO_ORIGINS: tuple[str, ...] = ()  # no page may read over HTTP
# Where `serve` keeps its state file unless told: ServeConfig's own default is none, so
# that a server embedded in a program or a test never finds another one's figures.
PER_USER_STATE_DIR = platformdirs.user_state_path("proca-stats")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One flag (or a positional argument, named in capitals) and all that is known of it.

    ``help`` is Markdown (`code`, [links](#anchor)), shown plain by --help. A setting whose
    default is a bool is a switch: on when its flag is given, or its variable is 1.
    """

    flag: str
    commands: tuple[str, ...]
    _: KW_ONLY
    help: str
    default: T
    parse: Callable[[str, str], T]  # (flag, text) -> value, or ConfigError naming the flag
    metavar: str | None = None  # what the value is called in --help and the README
    env: str | None = None
    aliases: tuple[str, ...] = ()  # older names of ``env``, read while it is unset
    unit: str | None = None  # of the value: shown with the default
    required: bool = False
    shown_default: str | None = None  # when the value is the machine's or another flag's
    field: str | None = None  # the ServeConfig (or Limits) field it fills
    # Given more than once, its values add up; they reach ``parse`` as one comma-separated
    # text, as its variable holds them.
    repeatable: bool = False

    @property
    def dest(self) -> str:
        """Its attribute in argparse's namespace."""
        return self.flag.lstrip("-").replace("-", "_").lower()

    @property
    def switch(self) -> bool:
        return isinstance(self.default, bool)

    @property
    def positional(self) -> bool:
        return not self.flag.startswith("-")

    @property
    def variables(self) -> tuple[str, ...]:
        """The environment variables it is read from, the first set one winning."""
        return (self.env, *self.aliases) if self.env else ()

    def value(self, given: str | list[str] | None) -> T:
        """Its value: ``given`` on the command line (a switch's flag gives "1"; a repeatable
        one's flags, a list), else the first of its variables that is set and not empty,
        else the default.

        A mistake is reported under the flag; a switch's, whose flag holds no text, under
        the variable.
        """
        if isinstance(given, list):
            given = ",".join(given)
        if given is not None:
            return self.parse(self.flag, given)
        for name in self.variables:
            if text := os.environ.get(name):
                return self.parse(name if self.switch else self.flag, text)
        return self.default


# The table, in the README's order. A name binds each entry ServeConfig takes a default from.
# fmt: off
SETTINGS: tuple[Setting[Any], ...] = (
    Setting("--log-level", ALL, metavar="LEVEL", default="INFO",
            parse=one_of(LOG_LEVELS, any_case=True),
            help=", ".join(f"`{level}`" for level in LOG_LEVELS[:-1])
            + f" or `{LOG_LEVELS[-1]}`, in any case"),
    LISTEN := Setting(
            "--listen", SERVE, metavar="HOST:PORT", env="PROCA_STATS_LISTEN",
            default="127.0.0.1:50051", parse=parse_address, field="listen",
            help="address to serve on (`[::1]:PORT` for IPv6, port 0 for any free port); "
            "a non-loopback address needs TLS or `--insecure`"),
    DATABASE_URL := Setting(
            "--database-url", DATABASE, metavar="URL", env="PROCA_STATS_DATABASE_URL",
            aliases=("DATABASE_URL",), default=None, field="database_url",
            parse=parse_text,  # checked when the database is opened
            help="PostgreSQL with Proca's tables; without it the embedded PostgreSQL is used. "
            "One that cannot be used (no such database, a wrong password, no Proca tables) "
            "ends `serve` at once"),
    DATA_DIR := Setting(
            "--data-dir", DATABASE, metavar="DIR", env="PROCA_STATS_DATA_DIR",
            default=platformdirs.user_data_path("proca-stats"), parse=parse_path,
            shown_default="per-user data dir (`~/.local/share/proca-stats`)", field="data_dir",
            help="where the embedded PostgreSQL keeps its data"),
    Setting("--demo", SERVE, default=False, parse=parse_switch,
            help="on the embedded database: load the demo data set once, then simulate a few "
            "actions a second (see [Try it](#try-it))"),
    SYNC_INTERVAL := Setting(
            "--sync-interval", SERVE, metavar="MS", env="PROCA_STATS_SYNC_INTERVAL",
            aliases=("SYNC_INTERVAL",),  # Proca's own name for it
            default=60_000, unit="ms", parse=parse_milliseconds, field="sync_interval_ms",
            help="time between syncs of live campaigns (incremental after the first full "
            "calculation); `0` = only at start"),
    SLOW_SYNC_INTERVAL := Setting(
            "--slow-sync-interval", SERVE, metavar="MS", env="PROCA_STATS_SLOW_SYNC_INTERVAL",
            aliases=("SLOW_SYNC_INTERVAL",),
            default=600_000, unit="ms", parse=parse_milliseconds, field="slow_sync_interval_ms",
            help="time between refreshes of closed and ignored campaigns that changed (at the "
            "next sync after it elapsed); `0` = at every sync"),
    FULL_SYNC_INTERVAL := Setting(
            "--full-sync-interval", SERVE, metavar="MS", env="PROCA_STATS_FULL_SYNC_INTERVAL",
            aliases=("FULL_SYNC_INTERVAL",),
            default=3_600_000, unit="ms", parse=parse_milliseconds, field="full_sync_interval_ms",
            help="time between full calculations, the safety net for deletes and changes that "
            "do not set `updated_at`; `0` = only at start"),
    CHANGE_OVERLAP := Setting(
            "--change-overlap", SERVE, metavar="MS", env="PROCA_STATS_CHANGE_OVERLAP",
            aliases=("CHANGE_OVERLAP",),
            default=60_000, unit="ms", parse=parse_milliseconds, field="change_overlap_ms",
            help="how far behind the newest `updated_at` already counted a sync looks again, "
            "for rows committed late"),
    SYNC_TIMEOUT := Setting(
            "--sync-timeout", SERVE, metavar="MS", env="PROCA_STATS_SYNC_TIMEOUT",
            default=300_000, unit="ms", parse=parse_milliseconds, field="sync_timeout_ms",
            help="a sync query running longer is cancelled (`statement_timeout`); the sync "
            "counts as failed and is retried; `0` = never"),
    SYNC_DATABASE_URL := Setting(
            "--sync-database-url", SERVE, metavar="URL", env="PROCA_STATS_SYNC_DATABASE_URL",
            default=None, shown_default="`--database-url`", parse=check_database_url,
            field="sync_database_url",
            help="PostgreSQL the calculations read, such as a read replica "
            "(see [Running several replicas](#running-several-replicas))"),
    FANOUT := Setting(
            "--fanout", SERVE, env="PROCA_STATS_FANOUT", default=False, parse=parse_switch,
            field="fanout",
            help="share Increments with the other replicas on the same `--database-url` "
            "through LISTEN/NOTIFY"),
    FANOUT_CHANNEL := Setting(
            "--fanout-channel", SERVE, metavar="NAME", env="PROCA_STATS_FANOUT_CHANNEL",
            default="proca_stats", parse=parse_channel, field="fanout_channel",
            help="the LISTEN/NOTIFY channel: lower-case letters, digits and `_`, "
            "at most 63 characters"),
    CHANGE_FEED := Setting(
            "--change-feed", SERVE, metavar="KIND", env="PROCA_STATS_CHANGE_FEED",
            default="auto", parse=parse_change_feed, field="change_feed",
            help="how a sync finds changed rows: `logical` (a replication slot; see "
            "[Running beside Proca](#running-beside-proca)), `updated-at`, or `auto` "
            "(`logical` when the slot exists)"),
    FEED_SLOT := Setting(
            "--feed-slot", FEED, metavar="NAME", env="PROCA_STATS_FEED_SLOT",
            default="proca_stats", parse=parse_channel, field="feed_slot",
            help="the change feed's replication slot and publication; one per replica"),
    STATE_DIR := Setting(
            "--state-dir", SERVE, metavar="DIR", env="PROCA_STATS_STATE_DIR", default=None,
            parse=parse_path, field="state_dir",
            shown_default="per-user state dir (`~/.local/state/proca-stats`)",
            help="where the figures are kept for a warm restart, one file per database"),
    Setting("--no-state", SERVE, env="PROCA_STATS_NO_STATE", default=False, parse=parse_switch,
            help="keep no state file: every start is cold"),
    Setting("--tls-cert", SERVE, metavar="FILE", env="PROCA_STATS_TLS_CERT", default=None,
            parse=parse_text,
            help="PEM certificate (chain) of the server; turns TLS on, with `--tls-key`"),
    Setting("--tls-key", SERVE, metavar="FILE", env="PROCA_STATS_TLS_KEY", default=None,
            parse=parse_text, help="PEM private key of `--tls-cert`"),
    Setting("--tls-client-ca", SERVE, metavar="FILE", env="PROCA_STATS_TLS_CLIENT_CA",
            default=None, parse=parse_text,
            help="mutual TLS: clients must present a certificate signed by this CA"),
    Setting("--insecure", SERVE, default=False, parse=parse_switch,
            help="allow plaintext on a non-loopback `--listen` (behind a trusted "
            "TLS-terminating proxy only)"),
    Setting("--token-file", SERVE, metavar="FILE", env="PROCA_STATS_TOKEN_FILE", default=None,
            parse=parse_text,
            help="bearer tokens, one per line (`#` comments and blank lines skipped); "
            "`Increment` then needs `authorization: Bearer <token>`"),
    PROTECT_READS := Setting(
            "--protect-reads", SERVE, default=False, parse=parse_switch, field="protect_reads",
            help="with `--token-file`: `GetStats` and reflection need a token too "
            "(health stays open)"),
    Setting("--max-campaigns", SERVE, metavar="N", env="PROCA_STATS_MAX_CAMPAIGNS",
            default=LIMITS.max_campaigns, parse=parse_count, field="max_campaigns",
            help="campaigns that Increments may create in all; past it `RESOURCE_EXHAUSTED`"),
    Setting("--max-keys-per-map", SERVE, metavar="N", env="PROCA_STATS_MAX_KEYS_PER_MAP",
            default=LIMITS.max_keys_per_map, parse=parse_count, field="max_keys_per_map",
            help="distinct action types, areas or orgs that Increments may create per campaign"),
    Setting("--max-action-ids", SERVE, metavar="N", env="PROCA_STATS_MAX_ACTION_IDS",
            default=LIMITS.max_action_ids, parse=parse_count, field="max_action_ids",
            help="action ids remembered while no sync comes, so that a retried Increment "
            "counts once; past it the oldest are forgotten "
            "(see [No lost and no doubled increments](#no-lost-and-no-doubled-increments))"),
    Setting("--max-request-bytes", SERVE, metavar="N", env="PROCA_STATS_MAX_REQUEST_BYTES",
            default=LIMITS.max_request_bytes, unit="bytes", field="max_request_bytes",
            parse=partial(parse_count, maximum=INT32_MAX),
            help="largest request accepted (`RESOURCE_EXHAUSTED` past it)"),
    METRICS_LISTEN := Setting(
            "--metrics-listen", SERVE, metavar="HOST:PORT", env="PROCA_STATS_METRICS_LISTEN",
            default=None, parse=parse_address_or_none, field="metrics_listen",
            help="serve Prometheus metrics at `http://HOST:PORT/metrics` (404 elsewhere)"),
    Setting("--log-format", SERVE, metavar="FORMAT", default="text",
            parse=one_of(("text", "json")),
            help="`text`, or `json` for one JSON object per line"),
    MAX_WATCHERS := Setting(
            "--max-watchers", SERVE, metavar="N", env="PROCA_STATS_MAX_WATCHERS",
            default=1000, parse=partial(parse_count, minimum=0), field="max_watchers",
            help="how many `WatchStats` streams may be open at once (each holds a thread); "
            "`0` refuses them all"),
    HTTP_LISTEN := Setting(
            "--http-listen", SERVE, metavar="HOST:PORT", env="PROCA_STATS_HTTP_LISTEN",
            default=None, parse=parse_address_or_none, field="http_listen",
            help="also serve StatsService over HTTP/1.1 and HTTP/2 (Connect, gRPC-Web; see "
            "`docs/web.md`); a non-loopback address needs TLS or `--insecure`"),
    HTTP_MAX_AGE := Setting(
            "--http-max-age", SERVE, metavar="SECONDS", env="PROCA_STATS_HTTP_MAX_AGE",
            default=5, unit="s", field="http_max_age",
            parse=partial(parse_count, minimum=0, unit="seconds", maximum=INT32_MAX),
            help="how long a GET answer of the HTTP port may be cached"),
    CORS_ORIGINS := Setting(
            "--cors-origin", SERVE, metavar="ORIGIN", env="PROCA_STATS_CORS_ORIGINS",
            default=NO_ORIGINS, parse=parse_origins, repeatable=True, field="cors_origins",
            help="an origin whose pages may read over HTTP (`https://campaign.example.org`), "
            "or `*`; repeatable, or comma-separated; writes are never allowed from browsers"),
    Setting("--grace", SERVE, metavar="SECONDS", default=10.0, unit="s", parse=parse_wait,
            help="how long in-flight RPCs may finish after SIGTERM/SIGINT "
            "(a second signal exits at once)"),
    Setting("--target", CALLS, metavar="HOST:PORT", env="PROCA_STATS_TARGET",
            default=LISTEN.default,  # where `serve` listens unless told otherwise
            parse=parse_target, help="server to call"),
    Setting("--timeout", CALLS, metavar="SECONDS", default=5.0, unit="s", parse=parse_seconds,
            help="deadline of the call"),
    Setting("--tls", CALLS, default=False, parse=parse_switch,
            help="call over TLS, trusting the system's CAs"),
    Setting("--tls-ca", CALLS, metavar="FILE", default=None, parse=parse_text,
            help="call over TLS, trusting this PEM CA"),
    Setting("--tls-cert", CALLS, metavar="FILE", default=None, parse=parse_text,
            help="client certificate for mutual TLS, with `--tls-key`"),
    Setting("--tls-key", CALLS, metavar="FILE", default=None, parse=parse_text,
            help="PEM private key of `--tls-cert`"),
    Setting("--token-file", CALLS, metavar="FILE", env="PROCA_STATS_TOKEN_FILE", default=None,
            parse=parse_text, help="send the file's first token as bearer token"),
    Setting("CAMPAIGN_ID", ("get",), default=None, parse=parse_int64,
            help="the campaign whose stats to print"),
    Setting("--campaign", ("increment",), metavar="ID", required=True, default=None,
            parse=parse_int64, help="the action's campaign"),
    Setting("--org", ("increment",), metavar="ID", required=True, default=None,
            parse=parse_int64, help="the org of the action's page"),
    Setting("--type", ("increment",), metavar="TYPE", required=True, default=None,
            parse=parse_text, help="the action type (`signature`, `share`, …)"),
    Setting("--area", ("increment",), metavar="AREA", default=None, parse=parse_text,
            help="the supporter's area (counted with `--new-supporter`)"),
    Setting("--new-supporter", ("increment",), default=False, parse=parse_switch,
            help="the action created a new supporter: count them"),
    Setting("--action-id", ("increment",), metavar="ID", default=None, parse=parse_int64,
            help="the stored action's id: a retried call counts once"),
    Setting("--service", ("health",), metavar="NAME", default="", parse=parse_text,
            shown_default="the server's",
            help="the service whose health to check, such as `proca.stats.v1.StatsService`"),
    Setting("--recommended-indexes", ("db init",), default=False, parse=parse_switch,
            help="also create the indexes incremental syncs use "
            "(see [Recommended indexes](#recommended-indexes))"),
    Setting("--change-feed", ("db init",), default=False, parse=parse_switch,
            help="also make the change feed's publication and replication slot"),
    Setting("--force", ("db demo",), default=False, parse=parse_switch,
            help="load the demo data set even beside rows the tables hold"),
)
# fmt: on


@dataclass(frozen=True)
class HttpTimeouts:
    """Seconds a client of the HTTP port may make the server wait, so that slow or
    vanished clients cannot hold connections, tasks or watcher places.

    Not settings: the defaults suit browsers and CDNs; tests shorten them.
    """

    idle: float = 10.0  # a connection with no request, or whose request head is incomplete
    body: float = 10.0  # to send a request's body
    write: float = 30.0  # to take each message sent (a stream's reader that takes none: dropped)


@dataclass(frozen=True)
class TlsKeys:
    """PEM contents, read when the settings are checked, so that a wrong path ends the
    command before anything (an embedded PostgreSQL, say) has started."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None  # set: clients must present a certificate it signed


@dataclass(frozen=True)
class ServeConfig:
    """What a server runs with. A field one setting fills takes its default from the table;
    tls and tokens are read from the files settings name; the rest are for embedding and
    tests."""

    listen: str = LISTEN.default
    database_url: str | None = DATABASE_URL.default  # None: run on the embedded PostgreSQL
    sync_interval_ms: int = SYNC_INTERVAL.default  # between refreshes of live campaigns
    sync_timeout_ms: int = SYNC_TIMEOUT.default
    slow_sync_interval_ms: int = SLOW_SYNC_INTERVAL.default
    full_sync_interval_ms: int = FULL_SYNC_INTERVAL.default
    change_overlap_ms: int = CHANGE_OVERLAP.default
    data_dir: Path = DATA_DIR.default
    tls: TlsKeys | None = None
    tokens: tuple[bytes, ...] = ()  # bearer tokens; none: no RPC needs one
    protect_reads: bool = PROTECT_READS.default
    limits: Limits = LIMITS
    metrics_listen: str | None = METRICS_LISTEN.default
    workers: int = 16  # threads answering unary RPCs
    max_watchers: int = MAX_WATCHERS.default  # open WatchStats streams, each holding a thread
    connect_timeout: float = 10.0  # seconds to wait for a database connection
    fanout: bool = FANOUT.default  # share Increments with other replicas through LISTEN/NOTIFY
    fanout_channel: str = FANOUT_CHANNEL.default
    sync_database_url: str | None = SYNC_DATABASE_URL.default  # None: the one it listens on
    http_listen: str | None = HTTP_LISTEN.default  # the web face on HOST:PORT; None: off
    http_max_age: int = HTTP_MAX_AGE.default
    cors_origins: tuple[str, ...] = CORS_ORIGINS.default  # pages that may read; "*": any
    http_timeouts: HttpTimeouts = HttpTimeouts()
    change_feed: str = CHANGE_FEED.default  # one of CHANGE_FEEDS
    feed_slot: str = FEED_SLOT.default
    state_dir: Path | None = STATE_DIR.default  # None: no state file (`serve` names one)


def plain(markdown: str) -> str:
    """Markdown as --help shows it: code without backquotes, a link to a README section as
    the section's name."""
    return re.sub(r"\[([^]]+)\]\(#[^)]*\)", r'"\1" in the README', markdown).replace("`", "")


def _value(setting: Setting[Any], code: str = "") -> str | None:
    """The default with its unit (the value in ``code`` marks), unless it is None, empty
    (a repeatable setting given nowhere) or a switch's off."""
    value = setting.default
    if value is None or value == () or setting.switch:
        return None
    text = code + (f"{value:g}" if isinstance(value, float) else str(value)) + code
    return f"{text} {setting.unit}" if setting.unit else text


def help_text(setting: Setting[Any]) -> str:
    """Its line in --help: the help, and where else its value comes from."""
    names = [f"{name}=1" if setting.switch else name for name in setting.variables]
    notes = [f"env {', else '.join(names)}"] if names else []
    if default := _value(setting) or setting.shown_default:
        notes.append(f"default {plain(default)}")
    return plain(setting.help) + (f" ({'; '.join(notes)})" if notes else "")


def default_cell(setting: Setting[Any]) -> str:
    """The default as the README states it."""
    if setting.shown_default is not None:
        return setting.shown_default
    if setting.required or setting.positional:
        return "required"
    if setting.switch:
        return "off"
    return _value(setting, code="`") or "none"


def markdown_table() -> str:
    """The README's Configuration table: one row per setting, in the table's order."""
    rows = ["| Command | Flag | Environment | Default | Meaning |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        commands = (
            "all" if setting.commands == ALL else ", ".join(f"`{c}`" for c in setting.commands)
        )
        value = f" {setting.metavar}" if setting.metavar else ""
        variables = ", else ".join(
            f"`{name}=1`" if setting.switch else f"`{name}`" for name in setting.variables
        )
        cells = (commands, f"`{setting.flag}{value}`", variables, default_cell(setting))
        rows.append(
            "".join(f"| {cell} " if cell else "| " for cell in cells) + f"| {setting.help} |"
        )
    return "\n".join(rows) + "\n"
