"""The PostgreSQL side of the tests: where an embedded one keeps its data, and holding the
actions table so a calculation waits where a test wants it."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


def postgres_folder() -> tempfile.TemporaryDirectory[str]:
    """A folder for an embedded PostgreSQL's data.

    Not under pytest's tmp_path: run as root, the embedded PostgreSQL runs as another
    user, and every pytest session that starts on the machine makes the shared
    pytest-of-<user> folder private again, cutting that user off from the data
    directories of the sessions already running.
    """
    return tempfile.TemporaryDirectory(prefix="proca-stats-test-")


def waiting_for_actions(conn: psycopg.Connection) -> bool:
    """Whether some session waits for a lock on the actions table."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'actions'::regclass"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return bool(row and row[0])


def lock_actions(database_url: str) -> psycopg.Connection:
    """A connection whose open transaction holds ``actions`` exclusively: a calculation
    waits behind it until the transaction ends."""
    conn = psycopg.connect(database_url)
    conn.execute("LOCK TABLE actions IN ACCESS EXCLUSIVE MODE")
    return conn


@contextmanager
def actions_locked(database_url: str) -> Iterator[psycopg.Connection]:
    """``lock_actions`` for a block; rows inserted on its connection commit at the end."""
    with lock_actions(database_url) as conn:  # commits and closes on leaving
        yield conn
