"""A PostgreSQL with ``wal_level = logical`` for the change feed's tests, on both of CI's runs.

The machine's PostgreSQL runs with wal_level replica, so the feed's tests start an
embedded one of their own (it ships pgoutput), once per test process, and give each
test a fresh database in it. A test's replication slots are dropped with its database
(PostgreSQL refuses to drop a database that still has one).
"""

from __future__ import annotations

import atexit
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from proca_stats.server.database import init_schema
from proca_stats.server.sync.changes import ChangeSource
from proca_stats.server.sync.feed import open_feed
from proca_stats.server.sync.refresh import HeldFigures, Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, Snapshots
from tests.support.controlled_postgres import ControlledPostgres
from tests.support.database import postgres_folder

_started: list[ControlledPostgres] = []


def logical_postgres() -> ControlledPostgres:
    """The process's logical PostgreSQL, started at the first call."""
    if not _started:
        folder = postgres_folder()
        server = ControlledPostgres(Path(folder.name))
        with psycopg.connect(server.url, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET wal_level = logical")
            conn.execute("ALTER SYSTEM SET max_replication_slots = 20")
        server.stop()
        server.start()

        def close() -> None:
            server.close()
            folder.cleanup()

        atexit.register(close)
        _started.append(server)
    return _started[0]


def drop_database(admin_url: str, name: str) -> None:
    """Drop a test database, and its replication slots first."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for (slot,) in conn.execute(
            "SELECT slot_name FROM pg_replication_slots WHERE database = %s", (name,)
        ).fetchall():
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE slot_name = %s AND active_pid IS NOT NULL",
                (slot,),
            )
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def fresh_database() -> tuple[str, str]:
    """A new database with Proca's schema in the logical PostgreSQL: its URL and name."""
    admin = logical_postgres().url
    name = f"proca_stats_feed_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_conninfo(admin, dbname=name)
    init_schema(url)
    return url, name


@contextmanager
def feed_refresher(
    url: str,
    *,
    slot: str = "proca_stats",
    changes: ChangeSource | None = None,
    full_interval: float = 0,
    slow_interval: float = 0,
    persist: Callable[[HeldFigures], None] | None = None,
) -> Iterator[Refresher]:
    """A refresher on the logical feed of ``url`` (its slot made when missing), as the server
    builds one; closed (the slot let go of) at the end of the block."""
    with ConnectionPool(url, min_size=1, max_size=CONNECTIONS) as pool:
        opened = Refresher(
            Snapshots(pool, connect_timeout=5),
            changes or open_feed(url, slot),
            full_interval=full_interval,
            slow_interval=slow_interval,
            persist=persist,
        )
        try:
            yield opened
        finally:
            opened.close()
