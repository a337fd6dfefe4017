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
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import psycopg
from google.protobuf import json_format
from google.protobuf.message import Message

from proca_stats.client import DEFAULT_TARGET, StatsClient, StatsError

from .app import BindError, StatsServer
from .calculation import calculate
from .config import (
    DEFAULT_CHANGE_OVERLAP_MS,
    DEFAULT_DATA_DIR,
    DEFAULT_FULL_SYNC_INTERVAL_MS,
    DEFAULT_LISTEN,
    DEFAULT_SLOW_SYNC_INTERVAL_MS,
    DEFAULT_SYNC_INTERVAL_MS,
    ConfigError,
    ServeConfig,
    check_can_listen,
    check_database_url,
    parse_listen,
    parse_milliseconds,
    parse_sync_interval,
)
from .database import (
    EmbeddedDatabaseError,
    create_recommended_indexes,
    init_schema,
    start_embedded,
)
from .messages import campaign_stats

log = logging.getLogger("proca_stats")

# What a person can get wrong; anything else is a bug and keeps its traceback.
USER_ERRORS = (ConfigError, BindError, EmbeddedDatabaseError, psycopg.Error, StatsError, OSError)


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


def cmd_serve(args: argparse.Namespace) -> None:
    check_can_listen(*parse_listen(args.listen))
    config = ServeConfig(
        listen=args.listen,
        database_url=args.database_url,
        sync_interval_ms=parse_sync_interval(args.sync_interval),
        slow_sync_interval_ms=parse_milliseconds(args.slow_sync_interval, "--slow-sync-interval"),
        full_sync_interval_ms=parse_milliseconds(args.full_sync_interval, "--full-sync-interval"),
        change_overlap_ms=parse_milliseconds(args.change_overlap, "--change-overlap"),
        data_dir=args.data_dir,
    )
    server = StatsServer(config, _database_url(args))
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            os._exit(1)  # a second signal: stop waiting for in-flight RPCs
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    log.info("serving proca.stats.v1.StatsService on %s (port %d)", config.listen, server.port)
    stopping.wait()
    log.info("stopping: finishing in-flight RPCs")
    server.stop(grace=args.grace)


def cmd_get(args: argparse.Namespace) -> None:
    with StatsClient(args.target, timeout=args.timeout) as client:
        print(to_json(client.get_stats(args.campaign_id), indent=2))


def cmd_increment(args: argparse.Namespace) -> None:
    with StatsClient(args.target, timeout=args.timeout) as client:
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


def cmd_dump(args: argparse.Namespace) -> None:
    with psycopg.connect(_database_url(args)) as conn:
        snapshot = calculate(conn)
    for campaign_id in sorted(snapshot.campaigns):
        counters = snapshot.campaigns[campaign_id]
        print(to_json(campaign_stats(campaign_id, counters, snapshot.taken_at)))


def _env_default(name: str, fallback: str | None) -> str | None:
    return os.environ.get(name) or fallback


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proca-stats", description="Live campaign counters of a Proca database, over gRPC."
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument(
        "--database-url",
        default=_env_default("DATABASE_URL", None),
        metavar="URL",
        help="PostgreSQL holding Proca's tables (env DATABASE_URL); "
        "without it an embedded PostgreSQL is used",
    )
    database.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_env_default("PROCA_STATS_DATA_DIR", str(DEFAULT_DATA_DIR)) or ""),
        metavar="DIR",
        help="where the embedded PostgreSQL keeps its data (env PROCA_STATS_DATA_DIR; "
        f"default {DEFAULT_DATA_DIR})",
    )
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument(
        "--target",
        default=_env_default("PROCA_STATS_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"server to call (env PROCA_STATS_TARGET, default {DEFAULT_TARGET})",
    )
    target.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="deadline of the call"
    )

    serve = commands.add_parser("serve", parents=[database], help="run the server")
    serve.add_argument(
        "--listen",
        default=_env_default("PROCA_STATS_LISTEN", DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"address to serve on (env PROCA_STATS_LISTEN, default {DEFAULT_LISTEN})",
    )
    serve.add_argument(
        "--sync-interval",
        default=_env_default("SYNC_INTERVAL", str(DEFAULT_SYNC_INTERVAL_MS)),
        metavar="MS",
        help="milliseconds between refreshes of live campaigns; 0 = only at start "
        f"(env SYNC_INTERVAL, default {DEFAULT_SYNC_INTERVAL_MS})",
    )
    serve.add_argument(
        "--slow-sync-interval",
        default=_env_default("SLOW_SYNC_INTERVAL", str(DEFAULT_SLOW_SYNC_INTERVAL_MS)),
        metavar="MS",
        help="milliseconds between refreshes of closed and ignored campaigns with changes "
        f"(env SLOW_SYNC_INTERVAL, default {DEFAULT_SLOW_SYNC_INTERVAL_MS})",
    )
    serve.add_argument(
        "--full-sync-interval",
        default=_env_default("FULL_SYNC_INTERVAL", str(DEFAULT_FULL_SYNC_INTERVAL_MS)),
        metavar="MS",
        help="milliseconds between full calculations, the safety net; 0 = only at start "
        f"(env FULL_SYNC_INTERVAL, default {DEFAULT_FULL_SYNC_INTERVAL_MS})",
    )
    serve.add_argument(
        "--change-overlap",
        default=_env_default("CHANGE_OVERLAP", str(DEFAULT_CHANGE_OVERLAP_MS)),
        metavar="MS",
        help="how far behind the newest updated_at a refresh looks again for late commits "
        f"(env CHANGE_OVERLAP, default {DEFAULT_CHANGE_OVERLAP_MS})",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight RPCs may finish on SIGTERM/SIGINT (default 10)",
    )
    serve.set_defaults(run=cmd_serve)

    get = commands.add_parser("get", parents=[target], help="print a campaign's stats as JSON")
    get.add_argument("campaign_id", type=int, metavar="CAMPAIGN_ID")
    get.set_defaults(run=cmd_get)

    increment = commands.add_parser("increment", parents=[target], help="count one action")
    increment.add_argument("--campaign", type=int, required=True, metavar="ID")
    increment.add_argument("--org", type=int, required=True, metavar="ID")
    increment.add_argument("--type", required=True, metavar="TYPE", help="action type")
    increment.add_argument("--area", metavar="AREA")
    increment.add_argument(
        "--new-supporter", action="store_true", help="the action created a new supporter"
    )
    increment.add_argument(
        "--action-id",
        type=int,
        metavar="ID",
        help="the stored action's id: a retried call then counts once",
    )
    increment.set_defaults(run=cmd_increment)

    db = commands.add_parser("db", help="database commands")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_init = db_commands.add_parser(
        "init", parents=[database], help="create the tables proca-stats reads, where missing"
    )
    db_init.add_argument(
        "--recommended-indexes",
        action="store_true",
        help="also create the indexes incremental refreshes use (on Proca's tables)",
    )
    db_init.set_defaults(run=cmd_db_init)

    dump = commands.add_parser(
        "dump", parents=[database], help="run one full calculation, print JSON lines"
    )
    dump.set_defaults(run=cmd_dump)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        args.run(args)
    except USER_ERRORS as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        sys.exit(f"proca-stats: error: {message}")
    except KeyboardInterrupt:
        sys.exit(130)
