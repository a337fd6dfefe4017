"""Kept database snapshots, and the connections that keep them and read in them.

A snapshot is kept by a transaction that only ran ``pg_export_snapshot()`` and
stays open: it reads no table, so it holds no lock that could stall Proca's
migrations. Queries run in short transactions on other connections that import
it by id (``SET TRANSACTION SNAPSHOT``), so two snapshots — the one held since
the last refresh and the new one — can be asked the same question.

Every connection taken from the pool is remembered until it is given back, so
that a stop can cancel whatever runs on any of them (``cancel``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from proca_stats.server.sync.calculation import CountingCursor, Cursor, keep_snapshot, read_in
from proca_stats.server.sync.position import Position

# Looking keys up waits on page reads at random places when the database's pages are
# not cached (about 0.1 ms each on the benchmark's machine, several per key): spread
# over a few connections, the reads overlap. A key set is split in parts of at least
# LOOKUP_PART keys, on at most LOOKUP_CONNECTIONS connections.
LOOKUP_CONNECTIONS = 4
LOOKUP_PART = 128
# How long a part waits for a pool connection before it is read on the reading one, after
# the others: a database that refuses more connections slows a refresh, it does not fail it.
LOOKUP_WAIT = 1.0
# The most connections held at once: two keep snapshots (the held one and the next), one
# reads in them, and the look-ups add up to LOOKUP_CONNECTIONS - 1.
CONNECTIONS = 3 + LOOKUP_CONNECTIONS - 1

P = TypeVar("P")  # a part of what is read
A = TypeVar("A")  # the answer about it
Connection = psycopg.Connection[TupleRow]


class RefreshCancelled(Exception):
    """The refresh was cancelled because the server is stopping."""


@dataclass(frozen=True)
class Kept:
    """A snapshot kept open: the transaction that keeps it, its id, when it was taken, and
    where it stands among transactions and in the WAL."""

    keeper: Connection
    snapshot_id: str
    taken_at: datetime
    position: Position


def parts(size: int) -> int:
    """Into how many parts ``size`` rows or keys to read are split (see LOOKUP_CONNECTIONS)."""
    return max(1, min(LOOKUP_CONNECTIONS, size // LOOKUP_PART))


def split(items: list[P], count: int) -> list[list[P]]:
    """``items`` dealt into ``count`` parts."""
    return [items[i::count] for i in range(count)]


class Snapshots:
    """Keeps snapshots on pool connections and reads in them, counting the rows read."""

    def __init__(
        self, pool: ConnectionPool, *, connect_timeout: float, timeout: float = 0.0
    ) -> None:
        """``timeout`` (seconds) cancels a query that runs longer (0: never)."""
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._timeout_ms = round(timeout * 1000)
        self._work: Connection | None = None  # reads in kept snapshots
        # Guards what another thread may touch: ``cancel()`` runs on the stopping thread.
        self._lock = threading.Lock()
        self._held: set[Connection] = set()  # taken from the pool
        self._cancelled = False
        self.rows_read: list[int] = []  # per cursor, since the last ``keep``

    def keep(self) -> Kept:
        """Take a new snapshot and keep it until ``release``."""
        self.rows_read = []
        keeper = self._take(self._connect_timeout)
        try:
            if self._work is None:
                self._work = self._take(self._connect_timeout)
            taken_at, snapshot_id, position = keep_snapshot(keeper)
        except BaseException:
            self.release(keeper)
            raise
        return Kept(keeper, snapshot_id, taken_at, position)

    @contextmanager
    def reading(self, snapshot_id: str) -> Iterator[CountingCursor]:
        """A cursor on the reading connection, in a short transaction in the snapshot."""
        assert self._work is not None, "keep() a snapshot first"
        with self._read_in(self._work, snapshot_id) as cur:
            yield cur

    def ask(
        self, items: Sequence[P], ask: Callable[[Cursor, P], A], *snapshot_ids: str
    ) -> list[list[A]]:
        """``ask`` each snapshot about each part of ``items``, the parts on as many
        connections at once (the reading one, and pool connections for the others). Each
        connection asks the snapshots in turn about its part, the later ones finding its
        pages read. The answers, by snapshot then part."""
        work = self._work
        assert work is not None, "keep() a snapshot first"

        def on(conn: Connection, part: P) -> list[A]:
            answers = []
            for snapshot_id in snapshot_ids:
                with self._read_in(conn, snapshot_id) as cur:
                    answers.append(ask(cur, part))
            return answers

        def on_pool(part: P) -> list[A] | None:
            """None when the pool has no connection to spare (the database refuses more, say)."""
            try:
                conn = self._take(LOOKUP_WAIT)
            except PoolTimeout:
                return None
            try:
                return on(conn, part)
            finally:
                self.release(conn)

        with ThreadPoolExecutor(max(1, len(items) - 1), "proca-stats-read") as threads:
            others = [threads.submit(on_pool, part) for part in items[1:]]
            by_part = [on(work, items[0])]
            for other, part in zip(others, items[1:], strict=True):
                answers = other.result()
                by_part.append(on(work, part) if answers is None else answers)
        return [list(answers) for answers in zip(*by_part, strict=True)]

    def release(self, conn: Connection) -> None:
        """Give a connection back to the pool (a kept snapshot's keeper ends its snapshot)."""
        with self._lock:
            self._held.discard(conn)
        try:
            if not conn.closed:
                conn.rollback()
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
        self._pool.putconn(conn)

    def release_reading(self) -> None:
        """Give the reading connection back (after an error, or to close)."""
        if self._work is not None:
            self.release(self._work)
            self._work = None

    def cancel(self) -> None:
        """Cancel the queries running now and refuse new ones: the server is stopping.

        Called from another thread, so that a stop does not wait for a long or
        blocked calculation; the refreshing thread then fails at once.
        """
        with self._lock:
            self._cancelled = True
            held = list(self._held)
        for conn in held:
            with suppress(psycopg.Error):  # unreachable or closed: closing the pool ends it
                conn.cancel_safe(timeout=1.0)

    def _take(self, timeout: float) -> Connection:
        """A pool connection, held until ``release`` (so that ``cancel`` can reach it)."""
        self._check_cancelled()
        conn = self._pool.getconn(timeout=timeout)
        with self._lock:
            self._held.add(conn)
        return conn

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise RefreshCancelled("the server is stopping")

    @contextmanager
    def _read_in(self, conn: Connection, snapshot_id: str) -> Iterator[CountingCursor]:
        """``read_in`` that counts the rows read, and starts nothing once cancelled."""
        self._check_cancelled()
        with read_in(conn, snapshot_id, self._timeout_ms) as cur:
            yield cur
            self.rows_read.append(cur.rows_read)
