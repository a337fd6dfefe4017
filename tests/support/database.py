"""The PostgreSQL side of the tests: where an embedded one keeps its data, and holding a
table (actions, say) so a calculation waits where a test wants it."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import psycopg
from psycopg_pool import ConnectionPool

from proca_stats.server.sync.changes import UpdatedAt
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, Snapshots

# Opens a refresher over the test's database (the ``refreshing`` fixture).
Refreshing = Callable[..., AbstractContextManager[Refresher]]


def postgres_folder() -> tempfile.TemporaryDirectory[str]:
    """A folder for an embedded PostgreSQL's data.

    Not under pytest's tmp_path: run as root, the embedded PostgreSQL runs as another
    user, and every pytest session that starts on the machine makes the shared
    pytest-of-<user> folder private again, cutting that user off from the data
    directories of the sessions already running.
    """
    return tempfile.TemporaryDirectory(prefix="proca-stats-test-")


def waiting_for_lock(conn: psycopg.Connection, table: str) -> bool:
    """Whether some session waits for a lock on ``table``."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        (table,),
    ).fetchone()
    return bool(row and row[0])


def waiting_for_actions(conn: psycopg.Connection) -> bool:
    """Whether some session waits for a lock on the actions table."""
    return waiting_for_lock(conn, "actions")


def lock_table(database_url: str, table: str) -> psycopg.Connection:
    """A connection whose open transaction holds ``table`` exclusively: a calculation
    that reads it waits behind it until the transaction ends."""
    conn = psycopg.connect(database_url)
    conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE".encode())
    return conn


def lock_actions(database_url: str) -> psycopg.Connection:
    """``lock_table`` of ``actions``."""
    return lock_table(database_url, "actions")


@contextmanager
def table_locked(database_url: str, table: str) -> Iterator[psycopg.Connection]:
    """``lock_table`` for a block; rows inserted on its connection commit at the end."""
    with lock_table(database_url, table) as conn:  # commits and closes on leaving
        yield conn


def actions_locked(database_url: str) -> AbstractContextManager[psycopg.Connection]:
    """``table_locked`` of ``actions``."""
    return table_locked(database_url, "actions")


@contextmanager
def refresher_on(
    database_url: str,
    *,
    full_interval: float = 0,
    slow_interval: float = 0,
    overlap: float = 0,
    connections: int = CONNECTIONS,
) -> Iterator[Refresher]:
    """A refresher as the server builds one (updated_at changes) on a pool of its own,
    closed with the block. Times in seconds; by default every change is refreshed at once
    (no slow refresh, no safety net, no overlap)."""
    with ConnectionPool(database_url, min_size=1, max_size=connections) as pool:
        refresher = Refresher(
            Snapshots(pool, connect_timeout=5),
            UpdatedAt(overlap),
            full_interval=full_interval,
            slow_interval=slow_interval,
        )
        try:
            yield refresher
        finally:
            refresher.close()
