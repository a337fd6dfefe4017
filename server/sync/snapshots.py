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
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self, TypeVar

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
# How long giving the connections back waits for a read aside in flight.
ASIDE_WAIT = 1.0

P = TypeVar("P")  # a part of what is read
A = TypeVar("A")  # the answer about it
Connection = psycopg.Connection[TupleRow]


# How often a wait for a pool connection looks whether the server is stopping: the pool's
# own wait cannot be interrupted, and a database that refuses connections keeps it waiting.
TAKE_SLICE = 0.05


class RefreshCancelled(Exception):
    """The refresh was cancelled because the server is stopping."""


class NoConnection(PoolTimeout):
    """The pool has no connection and its last attempt to open one failed: the message is
    that failure (connection refused, say), told at once rather than after waiting for a
    connection that will not come."""


class ConnectFailures:
    """The last failure of a pool's connection attempts, which the pool itself only logs:
    a sync that found no connection can then say why (connection refused, a timeout)."""

    def __init__(self) -> None:
        self.last: psycopg.Error | None = None

    def connection_class(self) -> type[Connection]:
        """A connection class for the pool whose attempts are remembered here."""
        failures = self

        class Remembered(psycopg.Connection[TupleRow]):
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Self:
                try:
                    conn = super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    failures.last = error
                    raise
                failures.last = None
                return conn

        return Remembered


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
        self,
        pool: ConnectionPool,
        *,
        connect_timeout: float,
        timeout: float = 0.0,
        failures: ConnectFailures | None = None,
    ) -> None:
        """``timeout`` (seconds) cancels a query that runs longer (0: never); ``failures``
        are the pool's failed connection attempts, if its connection class records them."""
        self._pool = pool
        self._failures = failures
        self._connect_timeout = connect_timeout
        self._timeout_ms = round(timeout * 1000)
        self._work: Connection | None = None  # reads in kept snapshots
        self._aside: Connection | None = None  # reads in them for another thread (``aside``)
        self._aside_lock = threading.Lock()
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
    def connection(self) -> Iterator[Connection]:
        """A pool connection for a read outside the kept snapshots (which database this is),
        taken as ``keep`` takes one: a stop ends the wait and cancels its queries, and a
        database that refuses connections is told at once with the cause (NoConnection)."""
        conn = self._take(self._connect_timeout)
        try:
            yield conn
        finally:
            self.release(conn)

    @contextmanager
    def reading(self, snapshot_id: str) -> Iterator[CountingCursor]:
        """A cursor on the reading connection, in a short transaction in the snapshot."""
        assert self._work is not None, "keep() a snapshot first"
        with self._read_in(self._work, snapshot_id) as cur:
            yield cur

    @contextmanager
    def aside(self, snapshot_id: str) -> Iterator[Cursor]:
        """A cursor in a kept snapshot for a thread other than the refreshing one (whose is
        the reading connection), on a pool connection kept for such reads between blocks:
        taking one from the pool each time would cost as much as the read. One block at a
        time; after an error the connection goes back to the pool."""
        with self._aside_lock:
            self._check_cancelled()
            if self._aside is None:
                self._aside = self._take(self._connect_timeout)
            try:
                with read_in(self._aside, snapshot_id, self._timeout_ms) as cur:
                    yield cur
            except BaseException:
                self._release_aside()
                raise

    def _release_aside(self) -> None:
        """Give the connection of ``aside`` back, if one is kept; the caller holds its lock."""
        if self._aside is not None:
            self.release(self._aside)
            self._aside = None

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
        """Give the reading connections back (after an error, or to close)."""
        if self._work is not None:
            self.release(self._work)
            self._work = None
        # A read aside in flight (its query cancelled at a stop, or stuck on a dead network)
        # gives its connection back itself when it fails; closing the pool ends it otherwise.
        if self._aside_lock.acquire(timeout=ASIDE_WAIT):
            try:
                self._release_aside()
            finally:
                self._aside_lock.release()

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
        """A pool connection, held until ``release`` (so that ``cancel`` can reach it).

        PoolTimeout when none comes within ``timeout`` s; NoConnection as soon as the pool
        has none and its last connection attempt failed. The pool's threads keep trying on
        their own schedule, so a later call finds the connection once the database is back.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._check_cancelled()
            wait = max(0.001, min(TAKE_SLICE, deadline - time.monotonic()))
            try:
                conn = self._pool.getconn(timeout=wait)
                break
            except PoolTimeout:
                failed = self._failures.last if self._failures else None
                if failed is not None:
                    raise NoConnection(str(failed)) from None
                if time.monotonic() >= deadline:
                    raise
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
