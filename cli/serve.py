"""The server commands: `serve` runs the server; `db init`, `db demo`, `db drop-feed` and
`dump` work on Proca's database. Each takes the database options (--database-url, or an
embedded PostgreSQL kept in --data-dir)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import NoReturn

import psycopg

from proca_stats.cli.options import Command, key_pair
from proca_stats.cli.output import to_json
from proca_stats.cli.serve_start import check_databases, load_demo_once, start_trickle
from proca_stats.server import version
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.api.messages import campaign_stats
from proca_stats.server.api.tls import read_tls
from proca_stats.server.app import StatsServer
from proca_stats.server.checks import (
    ConfigError,
    check_can_listen,
    check_database_url,
    is_loopback,
    parse_listen,
)
from proca_stats.server.database import (
    create_recommended_indexes,
    init_schema,
    leave_embedded,
    start_embedded,
)
from proca_stats.server.demo import load_demo
from proca_stats.server.settings import PER_USER_STATE_DIR, ServeConfig, TlsKeys
from proca_stats.server.state.limits import Limits
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.slot import drop_feed, set_up
from proca_stats.server.tracing import Tracing

log = logging.getLogger("proca_stats")

CAPS = frozenset(field.name for field in dataclasses.fields(Limits))


def _database_url(args: argparse.Namespace) -> str:
    """The given database, or the embedded one (started, with its schema) when none is."""
    if args.database_url:
        return check_database_url("--database-url", args.database_url)
    return start_embedded(args.data_dir)


def _tls(args: argparse.Namespace) -> TlsKeys | None:
    pair = key_pair(args)
    if pair is None:
        if args.tls_client_ca:
            raise ConfigError("--tls-client-ca: needs --tls-cert and --tls-key")
        return None
    return read_tls(*pair, Path(args.tls_client_ca) if args.tls_client_ca else None)


def check_exposure(host: str, tls: TlsKeys | None, insecure: bool, flag: str = "--listen") -> None:
    """Plaintext is for loopback only, unless the operator says --insecure on purpose."""
    if tls is None and not insecure and not is_loopback(host):
        raise ConfigError(
            f"{flag}: {host} is reachable from other machines; "
            "give --tls-cert and --tls-key, or --insecure to serve plaintext anyway"
        )


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The server's settings, their values read: each setting with a config field fills it
    (a cap, the field of its Limits); the files are read and the flags that go together
    checked, each mistake in one line.

    Whether the port can be bound is asked last, so that a mistake in another flag is
    reported as such even while the port is taken.
    """
    host, port = parse_listen(args.listen)
    tls = _tls(args)
    check_exposure(host, tls, args.insecure)
    if args.protect_reads and not args.token_file:
        raise ConfigError("--protect-reads: needs --token-file")
    http = parse_listen(args.http_listen, "--http-listen") if args.http_listen else None
    if http is not None:
        check_exposure(http[0], tls, args.insecure, "--http-listen")
    elif args.cors_origin:
        raise ConfigError("--cors-origin: needs --http-listen")
    given = {s.field: getattr(args, s.dest) for s in args.settings if s.field}
    given["state_dir"] = None if args.no_state else given["state_dir"] or PER_USER_STATE_DIR
    config = ServeConfig(
        **{name: value for name, value in given.items() if name not in CAPS},
        limits=Limits(**{name: value for name, value in given.items() if name in CAPS}),
        tls=tls,
        tokens=load_tokens(Path(args.token_file)) if args.token_file else (),
    )
    check_can_listen(host, port)
    if http is not None:
        check_can_listen(*http, "--http-listen")
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
    if args.demo and args.database_url:
        raise ConfigError("--demo: runs on the embedded database; leave out --database-url")
    tracing = Tracing.from_environment()
    signals = _StopSignals()
    database_url = _database_url(args)
    signals.allow_exit_at_once()
    if signals.stopping.is_set():
        log.info("stopped before serving")
        return
    if args.demo:
        load_demo_once(database_url)
    check_databases(config, database_url)
    server = StatsServer(config, database_url, tracing)
    server.start()
    log.info(
        "serving proca.stats.v1.StatsService on %s (port %d), proca-stats %s",
        config.listen,
        server.port,
        version(),
    )
    if server.http is not None:
        log.info("serving it over HTTP on %s (port %d)", config.http_listen, server.http.port)
    trickle = start_trickle(config, database_url, server.port) if args.demo else None
    signals.stopping.wait()
    log.info("stopping: finishing in-flight RPCs (up to %g s)", args.grace)
    if trickle is not None:
        trickle.stop()
    server.stop(grace=args.grace)
    log.info("stopped")


def cmd_db_init(args: argparse.Namespace) -> None:
    url = _database_url(args)
    if args.database_url:  # the embedded database got its schema on start
        init_schema(url)
    if args.recommended_indexes:
        create_recommended_indexes(url)
        print("recommended indexes ready", file=sys.stderr)
    print("schema ready", file=sys.stderr)
    if args.change_feed:
        with psycopg.connect(url, autocommit=True) as conn:
            made = set_up(conn, args.feed_slot)
        print(
            f"change feed ready: publication and replication slot {args.feed_slot}"
            + (" made" if made else " already there"),
            file=sys.stderr,
        )


def cmd_db_drop_feed(args: argparse.Namespace) -> None:
    slot = args.feed_slot
    with psycopg.connect(_database_url(args), autocommit=True) as conn:
        dropped = drop_feed(conn, slot)
    names = ("replication slot", "publication")
    what = [name for name, gone in zip(names, dropped, strict=True) if gone]
    print(
        f"dropped the {' and the '.join(what)} {slot}" if what else f"no change feed {slot}",
        file=sys.stderr,
    )


def cmd_db_demo(args: argparse.Namespace) -> None:
    loaded = load_demo(_database_url(args), force=args.force)
    print(
        f"demo loaded: {loaded.campaigns} campaigns, {loaded.supporters} supporters,"
        f" {loaded.actions} actions",
        file=sys.stderr,
    )


def cmd_dump(args: argparse.Namespace) -> None:
    with psycopg.connect(_database_url(args)) as conn:
        snapshot = calculate(conn)
    for campaign_id in sorted(snapshot.campaigns):
        counters = snapshot.campaigns[campaign_id]
        print(to_json(campaign_stats(campaign_id, counters, snapshot.taken_at)))


COMMANDS = (
    Command("serve", "run the server", cmd_serve),
    Command("db init", "create the tables proca-stats reads, if missing", cmd_db_init),
    Command("db demo", "load a small Proca-shaped demo data set", cmd_db_demo),
    Command(
        "db drop-feed", "drop the change feed's replication slot and publication", cmd_db_drop_feed
    ),
    Command("dump", "run one full calculation, print JSON lines", cmd_dump),
)
