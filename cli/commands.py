"""The `proca-stats` command: serve, get, increment, db init, dump (SPEC §6).

Flags win over environment variables. A mistake a person can make ends with one
line on stderr and exit status 1 (2 for a malformed command line), never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from types import FrameType
from typing import NoReturn, TypeVar

import grpc
import psycopg
from google.protobuf import json_format
from google.protobuf.message import Message

from proca_stats.client import DEFAULT_TARGET, StatsClient, StatsError
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.api.messages import campaign_stats
from proca_stats.server.api.tls import read_certificates, read_key_pair, read_tls
from proca_stats.server.app import BindError, StatsServer
from proca_stats.server.database import (
    EmbeddedDatabaseError,
    create_recommended_indexes,
    init_schema,
    leave_embedded,
    start_embedded,
)
from proca_stats.server.logs import configure_logging
from proca_stats.server.settings import (
    DEFAULT_CHANGE_OVERLAP_MS,
    DEFAULT_DATA_DIR,
    DEFAULT_FANOUT_CHANNEL,
    DEFAULT_FEED_SLOT,
    DEFAULT_FULL_SYNC_INTERVAL_MS,
    DEFAULT_LISTEN,
    DEFAULT_MAX_WATCHERS,
    DEFAULT_SLOW_SYNC_INTERVAL_MS,
    DEFAULT_STATE_DIR,
    DEFAULT_SYNC_INTERVAL_MS,
    DEFAULT_SYNC_TIMEOUT_MS,
    INT32_MAX,
    ConfigError,
    Limits,
    ServeConfig,
    TlsKeys,
    check_can_listen,
    check_database_url,
    check_exposure,
    parse_change_feed,
    parse_channel,
    parse_count,
    parse_int64,
    parse_listen,
    parse_milliseconds,
    parse_seconds,
    parse_switch,
)
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.slot import FeedError, drop_feed, set_up

log = logging.getLogger("proca_stats")

# What a person can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    ConfigError,
    BindError,
    EmbeddedDatabaseError,
    FeedError,
    psycopg.Error,
    StatsError,
    OSError,
)


def to_json(message: Message, indent: int | None = None) -> str:
    """The proto3 JSON form, zeros and empty maps included."""
    return json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True),
        indent=indent,
        sort_keys=True,
    )


def _database_url(args: argparse.Namespace) -> str:
    """The given database, or the embedded one (started, with its schema) when none is."""
    if args.database_url:
        return check_database_url(args.database_url)
    return start_embedded(args.data_dir)


def _key_pair(args: argparse.Namespace) -> tuple[Path, Path] | None:
    """--tls-cert and --tls-key, which only go together (gRPC core aborts the process on
    a client certificate without its key)."""
    if not (args.tls_cert or args.tls_key):
        return None
    if not (args.tls_cert and args.tls_key):
        raise ConfigError("--tls-cert and --tls-key: TLS needs both the certificate and its key")
    return Path(args.tls_cert), Path(args.tls_key)


def _tls(args: argparse.Namespace) -> TlsKeys | None:
    pair = _key_pair(args)
    if pair is None:
        if args.tls_client_ca:
            raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
        return None
    return read_tls(*pair, Path(args.tls_client_ca) if args.tls_client_ca else None)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's settings from flags and environment, each checked with a one-line error.

    Whether the port can be bound is asked last, so that a mistake in another flag is
    reported as such even while the port is taken.
    """
    host, port = parse_listen(args.listen)
    tls = _tls(args)
    check_exposure(host, tls, args.insecure)
    if args.metrics_listen:
        parse_listen(args.metrics_listen, "--metrics-listen")
    if args.protect_reads and not args.token_file:
        raise ConfigError("--protect-reads: needs --token-file")
    sync_url = args.sync_database_url and check_database_url(
        args.sync_database_url, "--sync-database-url"
    )
    config = ServeConfig(
        listen=args.listen,
        database_url=args.database_url,
        sync_interval_ms=parse_milliseconds("--sync-interval", args.sync_interval),
        sync_timeout_ms=parse_milliseconds("--sync-timeout", args.sync_timeout),
        slow_sync_interval_ms=parse_milliseconds("--slow-sync-interval", args.slow_sync_interval),
        full_sync_interval_ms=parse_milliseconds("--full-sync-interval", args.full_sync_interval),
        change_overlap_ms=parse_milliseconds("--change-overlap", args.change_overlap),
        max_watchers=parse_count("--max-watchers", args.max_watchers, minimum=0),
        data_dir=args.data_dir,
        tls=tls,
        tokens=load_tokens(Path(args.token_file)) if args.token_file else (),
        protect_reads=args.protect_reads,
        limits=Limits(
            max_campaigns=parse_count("--max-campaigns", args.max_campaigns),
            max_keys_per_map=parse_count("--max-keys-per-map", args.max_keys_per_map),
            max_action_ids=parse_count("--max-action-ids", args.max_action_ids),
            max_request_bytes=parse_count(
                "--max-request-bytes", args.max_request_bytes, maximum=INT32_MAX
            ),
        ),
        metrics_listen=args.metrics_listen,
        fanout=args.fanout or parse_switch("PROCA_STATS_FANOUT", _env("PROCA_STATS_FANOUT")),
        fanout_channel=parse_channel("--fanout-channel", args.fanout_channel),
        sync_database_url=sync_url,
        change_feed=parse_change_feed(args.change_feed),
        feed_slot=parse_channel("--feed-slot", args.feed_slot),
        state_dir=None if args.no_state else Path(args.state_dir),
    )
    check_can_listen(host, port)
    return config


class _StopSignals:
    """SIGTERM and SIGINT of `serve`: the first asks for a graceful stop, a second for an exit
    at once.

    The handlers are installed before the embedded PostgreSQL starts, so a signal then cannot
    kill the process with PostgreSQL left running. An exit at once waits for that start to end:
    exiting earlier would leave initdb or pg_ctl to finish on their own and start a PostgreSQL
    that nobody stops.
    """

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._received: list[int] = []
        self._may_exit_at_once = False
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._received.append(signum)
        if len(self._received) > 1 and self._may_exit_at_once:
            _exit_at_once(signum)
        self.stopping.set()

    def allow_exit_at_once(self) -> None:
        """From now on a second signal ends the process at once, one already received too."""
        self._may_exit_at_once = True
        if len(self._received) > 1:
            _exit_at_once(self._received[-1])


def _exit_at_once(signum: int) -> NoReturn:
    """End the process without waiting for in-flight RPCs or threads. ``os._exit`` skips the
    atexit hook that stops the embedded PostgreSQL, so this process leaves it first."""
    log.warning("second signal: exiting without waiting for in-flight RPCs")
    leave_embedded()
    os._exit(128 + signum)


def cmd_serve(args: argparse.Namespace) -> None:
    config = serve_config(args)
    signals = _StopSignals()
    database_url = _database_url(args)
    signals.allow_exit_at_once()
    if signals.stopping.is_set():
        log.info("stopped before serving")
        return
    server = StatsServer(config, database_url)
    server.start()
    log.info("serving proca.stats.v1.StatsService on %s (port %d)", config.listen, server.port)
    signals.stopping.wait()
    log.info("stopping: finishing in-flight RPCs (up to %g s)", args.grace)
    server.stop(grace=args.grace)
    log.info("stopped")


def _client(args: argparse.Namespace) -> StatsClient:
    """A client with the TLS and token options of `get` and `increment`."""
    if not args.target.strip():
        raise ConfigError(
            f"--target: expected HOST:PORT such as {DEFAULT_TARGET}, got {args.target!r}"
        )
    pair = _key_pair(args)
    credentials = None
    if args.tls or args.tls_ca or pair:
        cert, key = read_key_pair(*pair) if pair else (None, None)
        ca = read_certificates("--tls-ca", Path(args.tls_ca)) if args.tls_ca else None
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca, private_key=key, certificate_chain=cert
        )
    token = load_tokens(Path(args.token_file))[0].decode() if args.token_file else None
    return StatsClient(args.target, timeout=args.timeout, credentials=credentials, token=token)


def cmd_get(args: argparse.Namespace) -> None:
    with _client(args) as client:
        print(to_json(client.get_stats(args.campaign_id), indent=2))


def cmd_increment(args: argparse.Namespace) -> None:
    with _client(args) as client:
        client.increment(
            args.campaign,
            args.org,
            args.type,
            area=args.area,
            new_supporter=args.new_supporter,
            action_id=args.action_id,
        )


def cmd_db_init(args: argparse.Namespace) -> None:
    url = _database_url(args)
    if args.database_url:  # the embedded database got its schema on start
        init_schema(url)
    if args.recommended_indexes:
        create_recommended_indexes(url)
        print("recommended indexes ready", file=sys.stderr)
    print("schema ready", file=sys.stderr)
    if args.change_feed:
        slot = parse_channel("--feed-slot", args.feed_slot)
        with psycopg.connect(url, autocommit=True) as conn:
            made = set_up(conn, slot)
        print(
            f"change feed ready: publication and replication slot {slot}"
            + (" made" if made else " already there"),
            file=sys.stderr,
        )


def cmd_db_drop_feed(args: argparse.Namespace) -> None:
    slot = parse_channel("--feed-slot", args.feed_slot)
    with psycopg.connect(_database_url(args), autocommit=True) as conn:
        dropped = drop_feed(conn, slot)
    what = [
        name
        for name, gone in zip(("replication slot", "publication"), dropped, strict=False)
        if gone
    ]
    print(
        f"dropped the {' and the '.join(what)} {slot}" if what else f"no change feed {slot}",
        file=sys.stderr,
    )


def cmd_dump(args: argparse.Namespace) -> None:
    with psycopg.connect(_database_url(args)) as conn:
        snapshot = calculate(conn)
    for campaign_id in sorted(snapshot.campaigns):
        counters = snapshot.campaigns[campaign_id]
        print(to_json(campaign_stats(campaign_id, counters, snapshot.taken_at)))


T = TypeVar("T")


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type that shows why ``parse`` refused a value: argparse itself would only
    say "invalid value"."""

    def convert(value: str) -> T:
        try:
            return parse(value)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return convert


class Parser(argparse.ArgumentParser):
    """Reports a malformed command line in one line, like every other mistake (exit status 2);
    --help still shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"proca-stats: error: {message.removeprefix('argument ')}\n")


def _env(name: str, fallback: str | None = None) -> str | None:
    return os.environ.get(name) or fallback


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        metavar="URL",
        help="PostgreSQL holding Proca's tables (env DATABASE_URL); "
        "without it an embedded PostgreSQL is used",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env("PROCA_STATS_DATA_DIR", str(DEFAULT_DATA_DIR)) or ""),
        metavar="DIR",
        help="where the embedded PostgreSQL keeps its data (env PROCA_STATS_DATA_DIR; "
        f"default {DEFAULT_DATA_DIR})",
    )


def _add_feed_slot(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--feed-slot",
        default=_env("PROCA_STATS_FEED_SLOT", DEFAULT_FEED_SLOT),
        metavar="NAME",
        help="the change feed's replication slot and publication (env PROCA_STATS_FEED_SLOT, "
        f"default {DEFAULT_FEED_SLOT})",
    )


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    limits = Limits()
    options: list[tuple[str, str, str | None, str]] = [
        # (flag, environment variable, default, help)
        ("--listen", "PROCA_STATS_LISTEN", DEFAULT_LISTEN, "address to serve on, HOST:PORT"),
        (
            "--sync-interval",
            "SYNC_INTERVAL",
            str(DEFAULT_SYNC_INTERVAL_MS),
            "milliseconds between refreshes of live campaigns; 0 = only at start",
        ),
        (
            "--slow-sync-interval",
            "SLOW_SYNC_INTERVAL",
            str(DEFAULT_SLOW_SYNC_INTERVAL_MS),
            "milliseconds between refreshes of closed and ignored campaigns with changes",
        ),
        (
            "--full-sync-interval",
            "FULL_SYNC_INTERVAL",
            str(DEFAULT_FULL_SYNC_INTERVAL_MS),
            "milliseconds between full calculations, the safety net; 0 = only at start",
        ),
        (
            "--change-overlap",
            "CHANGE_OVERLAP",
            str(DEFAULT_CHANGE_OVERLAP_MS),
            "how far behind the newest updated_at a refresh looks again for late commits",
        ),
        (
            "--sync-timeout",
            "PROCA_STATS_SYNC_TIMEOUT",
            str(DEFAULT_SYNC_TIMEOUT_MS),
            "milliseconds after which a calculation is cancelled; 0 = never",
        ),
        (
            "--sync-database-url",
            "PROCA_STATS_SYNC_DATABASE_URL",
            None,
            "PostgreSQL the calculations read (a read replica); default: --database-url",
        ),
        (
            "--fanout-channel",
            "PROCA_STATS_FANOUT_CHANNEL",
            DEFAULT_FANOUT_CHANNEL,
            "LISTEN/NOTIFY channel the replicas share Increments on",
        ),
        (
            "--change-feed",
            "PROCA_STATS_CHANGE_FEED",
            "auto",
            "how changes are found: logical (a replication slot), updated-at, or auto "
            "(logical when the slot exists)",
        ),
        (
            "--feed-slot",
            "PROCA_STATS_FEED_SLOT",
            DEFAULT_FEED_SLOT,
            "the change feed's replication slot and publication; one per replica",
        ),
        (
            "--state-dir",
            "PROCA_STATS_STATE_DIR",
            str(DEFAULT_STATE_DIR),
            "where the figures are kept for a warm restart, one file per database",
        ),
        ("--tls-cert", "PROCA_STATS_TLS_CERT", None, "PEM certificate (chain) of the server"),
        ("--tls-key", "PROCA_STATS_TLS_KEY", None, "PEM private key of --tls-cert"),
        (
            "--tls-client-ca",
            "PROCA_STATS_TLS_CLIENT_CA",
            None,
            "PEM CA: require client certificates signed by it (mutual TLS)",
        ),
        (
            "--token-file",
            "PROCA_STATS_TOKEN_FILE",
            None,
            "bearer tokens, one per line: Increment needs one",
        ),
        (
            "--metrics-listen",
            "PROCA_STATS_METRICS_LISTEN",
            None,
            "HOST:PORT to serve Prometheus metrics on, at /metrics",
        ),
        (
            "--max-campaigns",
            "PROCA_STATS_MAX_CAMPAIGNS",
            str(limits.max_campaigns),
            "campaigns that Increments may create, in all",
        ),
        (
            "--max-keys-per-map",
            "PROCA_STATS_MAX_KEYS_PER_MAP",
            str(limits.max_keys_per_map),
            "distinct action types, areas or orgs that Increments may create per campaign",
        ),
        (
            "--max-action-ids",
            "PROCA_STATS_MAX_ACTION_IDS",
            str(limits.max_action_ids),
            "action ids remembered between two syncs, so that retries count once",
        ),
        (
            "--max-watchers",
            "PROCA_STATS_MAX_WATCHERS",
            str(DEFAULT_MAX_WATCHERS),
            "WatchStats streams open at once, each holding a thread; 0 refuses them all",
        ),
        (
            "--max-request-bytes",
            "PROCA_STATS_MAX_REQUEST_BYTES",
            str(limits.max_request_bytes),
            "largest request accepted",
        ),
    ]
    for flag, env, default, text in options:
        shown = f"env {env}" + (f", default {default}" if default is not None else "")
        serve.add_argument(flag, default=_env(env, default), help=f"{text} ({shown})")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="serve plaintext on a non-loopback address (behind a trusted proxy only)",
    )
    serve.add_argument(
        "--fanout",
        action="store_true",
        help="share Increments with the other replicas on the same database "
        "(env PROCA_STATS_FANOUT=1)",
    )
    serve.add_argument(
        "--protect-reads", action="store_true", help="GetStats and reflection need a token too"
    )
    serve.add_argument(
        "--no-state", action="store_true", help="keep no state file: every start is cold"
    )
    serve.add_argument("--log-format", choices=["text", "json"], default="text")
    serve.add_argument(
        "--grace",
        type=_checked(partial(parse_seconds, zero=True)),
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight RPCs may finish on SIGTERM/SIGINT (default 10)",
    )


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        default=_env("PROCA_STATS_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"server to call (env PROCA_STATS_TARGET, default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--timeout",
        type=_checked(parse_seconds),
        default=5.0,
        metavar="SECONDS",
        help="deadline of the call",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    parser.add_argument("--tls-ca", metavar="FILE", help="use TLS, trusting this PEM CA")
    parser.add_argument("--tls-cert", metavar="FILE", help="client certificate (mutual TLS)")
    parser.add_argument("--tls-key", metavar="FILE", help="key of --tls-cert")
    parser.add_argument(
        "--token-file",
        default=_env("PROCA_STATS_TOKEN_FILE"),
        metavar="FILE",
        help="send the first token of FILE as bearer token (env PROCA_STATS_TOKEN_FILE)",
    )


def build_parser() -> argparse.ArgumentParser:
    levels = ["DEBUG", "INFO", "WARNING", "ERROR"]
    parser = Parser(
        prog="proca-stats", description="Live campaign counters of a Proca database, over gRPC."
    )
    parser.add_argument("--log-level", default="INFO", choices=levels)
    # Every command takes --log-level too, after its name; SUPPRESS keeps a command that
    # is not given it from overwriting the one given before the name.
    common = Parser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = partial(commands.add_parser, parents=[common])

    serve = command("serve", help="run the server")
    _add_database_options(serve)
    _add_serve_options(serve)
    serve.set_defaults(run=cmd_serve)

    int64 = _checked(parse_int64)  # ids; whether they are > 0 is the server's to say
    get = command("get", help="print a campaign's stats as JSON")
    get.add_argument("campaign_id", type=int64, metavar="CAMPAIGN_ID")
    _add_client_options(get)
    get.set_defaults(run=cmd_get)

    increment = command("increment", help="count one action")
    increment.add_argument("--campaign", type=int64, required=True, metavar="ID")
    increment.add_argument("--org", type=int64, required=True, metavar="ID")
    increment.add_argument("--type", required=True, metavar="TYPE", help="action type")
    increment.add_argument("--area", metavar="AREA")
    increment.add_argument(
        "--new-supporter", action="store_true", help="the action created a new supporter"
    )
    increment.add_argument(
        "--action-id",
        type=int64,
        metavar="ID",
        help="the stored action's id: a retried call then counts once",
    )
    _add_client_options(increment)
    increment.set_defaults(run=cmd_increment)

    db = command("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_init = db_commands.add_parser(
        "init", parents=[common], help="create the tables proca-stats reads, if missing"
    )
    _add_database_options(db_init)
    db_init.add_argument(
        "--recommended-indexes",
        action="store_true",
        help="also create the indexes incremental refreshes use (on Proca's tables)",
    )
    db_init.add_argument(
        "--change-feed",
        action="store_true",
        help="also make the change feed's publication and replication slot",
    )
    _add_feed_slot(db_init)
    db_init.set_defaults(run=cmd_db_init)

    drop = db_commands.add_parser(
        "drop-feed",
        parents=[common],
        help="drop the change feed's replication slot and publication",
    )
    _add_database_options(drop)
    _add_feed_slot(drop)
    drop.set_defaults(run=cmd_db_drop_feed)

    dump = command("dump", help="run one full calculation, print JSON lines")
    _add_database_options(dump)
    dump.set_defaults(run=cmd_dump)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, getattr(args, "log_format", "text"))
    try:
        args.run(args)
    except USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        sys.exit(f"proca-stats: error: {message}")
    except KeyboardInterrupt:
        sys.exit(130)
