"""The logical change feed: which rows changed between two snapshots, from a replication slot.

PostgreSQL's logical decoding turns the WAL back into committed transactions; the
slot remembers how far its reader confirmed. The feed reads through an ordinary
connection (``pg_logical_slot_peek_binary_changes``, then
``pg_replication_slot_advance``) rather than the replication protocol: it reads
when a refresh asks, in the refresh's own transaction (so a stop cancels it, and
``--sync-timeout`` bounds it), and needs no streaming client. docs/sync.md says
more (Change feed).

How the slot's position and the snapshots agree. Each kept snapshot knows the
transactions it sees and the WAL inserted just before (position.py). A refresh
from the held snapshot L to the new one N peeks at every transaction the slot has
not been advanced past, up to N's position, and sorts each by its xid:

- seen by L: its rows are in L's figures already, skipped;
- seen by N, not by L: its rows are the changes, compared in both snapshots;
- seen by neither: it committed just as N was taken. It is left in the slot for
  the next refresh: the mark's ``advance`` stays at or before its commit.

The peek decodes only flushed WAL, and a commit record is written before snapshots
see it: the slot moves to N's position only once PostgreSQL reports the WAL flushed
past it (the feed flushes it first), else only to the end of the last commit read.

Peeking does not consume: the slot is advanced (``settled``) only once the
snapshot whose changes end there is held and written to the state file, so a
crash at any moment leaves every change not in a kept or persisted snapshot in
the slot. A transaction read twice is skipped the second time, as L sees it.

One server per slot: the feed holds an advisory lock named after its slot on a
connection of its own for as long as it reads the slot; a second server asking
for the same slot is refused it (detection.py then falls back to updated_at).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import psycopg

from proca_stats.server.database import connection_options
from proca_stats.server.sync.calculation import Cursor
from proca_stats.server.sync.changes import Changed, ChangesLost, Mark
from proca_stats.server.sync.pgoutput import Transaction, Transactions
from proca_stats.server.sync.position import Position, format_lsn, parse_lsn, widen
from proca_stats.server.sync.slot import (
    SLOT,
    Connection,
    FeedError,
    SlotStatus,
    check_can_set_up,
    check_slot,
    lag_bytes,
    publication_ready,
    set_up,
    slot_status,
)
from proca_stats.server.sync.snapshots import TAKE_SLICE, RefreshCancelled

log = logging.getLogger(__name__)

PEEK = """
    SELECT data FROM pg_logical_slot_peek_binary_changes(
        %(slot)s::name, %(upto)s::pg_lsn, NULL,
        'proto_version', '1', 'publication_names', %(slot)s::text)
"""
FLUSHED = "SELECT pg_current_wal_flush_lsn()"
# A record in the transaction: PostgreSQL then flushes its commit before COMMIT returns. (A
# transaction that only takes an id wrote nothing before its commit record, and so commits
# asynchronously, flushing nothing.) pgoutput leaves messages out unless asked for them.
FLUSH = "SELECT pg_logical_emit_message(true, 'proca_stats', '')"
ADVANCE = "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)"
# An advisory lock per slot name, in a key space of proca-stats's own.
LOCK = "SELECT pg_try_advisory_lock(1886614630, hashtext(%s))"
HOLDER = """
    SELECT pid, coalesce(host(client_addr), 'local') FROM pg_stat_activity
    WHERE pid = (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
                 AND classid = 1886614630 AND objid = hashtext(%s)::oid LIMIT 1)
"""
# Changed rows past which the feed stops listing them: the refresh is a full calculation.
LIMIT = 1_000_000
FIGURES = {"actions", "supporters"}
READ_WHOLE = {"action_pages", "campaigns"}


class FeedBusy(RuntimeError):
    """Another server reads this slot (two servers must never consume one slot)."""


@dataclass(frozen=True)
class FeedMark:
    """Where the feed stands after a snapshot.

    ``advance``: the slot may be advanced to here, a record boundary at or before the
    commit of every transaction the snapshot does not see. ``covered``: every
    transaction whose commit record ends at or before it was read (None after a full
    calculation, which read everything the snapshot sees).
    """

    advance: int
    covered: int | None
    position: Position


class LogicalFeed:
    """Reads changes from one slot (``--feed-slot``), holding it for this server alone."""

    kind = "logical"

    def __init__(
        self,
        url: str,
        slot: str,
        *,
        connect: Callable[[str], Connection],
        create: bool,
        lag: Callable[[int], None] = lambda _: None,
    ) -> None:
        """``create``: make the publication and the slot when missing (``--change-feed
        logical``), else refuse to run without them. ``lag`` hears the slot's lag in
        bytes after each advance."""
        self.slot = slot
        self._url = url
        self._connect = connect
        self._create = create
        self._lag = lag
        self._conn: Connection | None = None  # holds the lock, advances the slot
        self._locked = False
        self._used = False  # the slot was read by this server
        self._lost: str | None = None  # why the next prepare() starts anew
        self._cancelled = threading.Event()  # the server is stopping

    def prepare(self) -> bool:
        """Hold the slot's lock and check the slot, making it anew when it was dropped or
        invalidated (``create``). True when the slot or the lock was taken (again): what
        a held snapshot's mark says may then no longer hold. Raises FeedError when the
        feed cannot be had, FeedBusy when another server has the slot."""
        fresh = self._lost is not None
        try:
            conn = self._connection()
            status = slot_status(conn, self.slot)
        except psycopg.OperationalError:
            self.close()  # a broken connection: the lock went with it
            conn = self._connection()
            status = slot_status(conn, self.slot)
        if status is not None:
            check_slot(conn, self.slot, status)
        ready = status is not None and not status.lost and publication_ready(conn, self.slot)
        if not ready and not self._create:
            what = "does not exist" if status is None else "cannot be used"
            raise FeedError(f"change feed: the replication slot {self.slot} {what}")
        fresh |= self._lock(conn)
        if not ready:
            if status is not None and status.lost:
                what = "was invalidated (the WAL it needed was removed: max_slot_wal_keep_size)"
            elif status is not None:
                what = "lacks its publication"
            else:
                what = "was dropped" if self._used else ""
            if what:
                log.warning(
                    "change feed: the replication slot %s %s; making it anew, then a full "
                    "calculation",
                    self.slot,
                    what,
                )
            fresh |= set_up(conn, self.slot)
            if not what:
                log.info("change feed: made the publication and replication slot %s", self.slot)
        self._used = True
        self._lost = None
        return fresh

    def check(self) -> None:
        """Refuse now, without waiting, a database that cannot give the feed (``--change-feed
        logical`` at start; without ``create`` there is nothing to refuse). The sync makes
        the publication and the slot."""
        if self._create:
            check_can_set_up(self._connection(), self.slot)

    def mark(self, cur: Cursor, at: Position) -> FeedMark:
        """After a full calculation: the slot stays where it is. Every transaction the
        snapshot does not see commits after it, as it was advanced only past transactions
        an earlier snapshot saw, or made before the snapshot was taken."""
        row = cur.execute(SLOT, (self.slot,)).fetchone()
        confirmed = row and SlotStatus.of(row[0]).confirmed
        if not confirmed:
            self._lost = "it disappeared"
            raise ChangesLost(f"the replication slot {self.slot} disappeared")
        return FeedMark(confirmed, None, at)

    def changed(self, cur: Cursor, since: Mark, at: Position) -> Changed:
        assert isinstance(since, FeedMark)
        flushed = parse_lsn(next(cur.execute(FLUSHED))[0])
        if flushed < at.lsn:
            self._flush()
            # Read again, never assumed: only what PostgreSQL says is flushed is decoded.
            flushed = parse_lsn(next(cur.execute(FLUSHED))[0])
        # Flushed past N: the peek reads every record before N's position, a record boundary,
        # so every commit before it is read. Else it reads what was flushed, whose last record
        # may be cut, and a commit past it may be one N does not see yet (its commit record
        # is written before snapshots see it): the slot then moves only to the end of the
        # last commit read.
        reached = flushed >= at.lsn
        sorted_out = _Sorted(since, at)
        try:
            with cur.connection.cursor(name="proca_stats_feed") as peek:
                peek.itersize = 2000
                peek.execute(PEEK, {"slot": self.slot, "upto": format_lsn(at.lsn)})
                for transaction in Transactions(LIMIT).read(bytes(row[0]) for row in peek):
                    sorted_out.add(transaction)
        except (psycopg.errors.UndefinedObject, psycopg.errors.ObjectNotInPrerequisiteState) as e:
            self._lost = str(e).strip().splitlines()[0]
            raise ChangesLost(f"change feed: {self._lost}") from e
        if sorted_out.missed:
            log.warning(
                "change feed: a transaction was seen by a snapshot before its commit was "
                "flushed (synchronous_commit off?); running a full calculation"
            )
        base = at.lsn if reached else sorted_out.read_to
        advance = min(base, sorted_out.carried or base)
        mark = FeedMark(advance, at.lsn if reached else flushed, at)
        return Changed(
            sorted(sorted_out.actions),
            sorted(sorted_out.supporters),
            mark,
            pages=sorted_out.pages,
            complete=sorted_out.complete and not sorted_out.missed,
        )

    def _flush(self) -> None:
        """Have the WAL flushed past the snapshot's position, if the database lets it.

        A peek stops at the flushed position, but a record it reaches that is only partly
        flushed makes it wait, polling, for the rest. On a quiet database nothing may flush
        it for many seconds (the WAL writer flushes whole pages; a standby snapshot record is
        written every 15 s): on PostgreSQL 15 refreshes then took 5 to 18 s instead of
        milliseconds. A transaction that writes one logical message commits synchronously,
        flushing the WAL up to its commit record, past the position (locally: a synchronous
        standby is not waited for)."""
        if self._conn is None:
            return
        try:
            with self._conn.transaction():
                self._conn.execute("SET LOCAL synchronous_commit = local")
                self._conn.execute(FLUSH)
        except psycopg.Error as error:  # a read-only role, say: the peek may wait
            log.debug("change feed: cannot flush the WAL: %s", str(error).strip())

    def settled(self, mark: Mark) -> None:
        """Advance the slot to the mark: the changes before it are in the held snapshot."""
        assert isinstance(mark, FeedMark)
        if self._conn is None:
            return
        try:
            status = slot_status(self._conn, self.slot)
            if status and status.confirmed is not None and mark.advance > status.confirmed:
                self._conn.execute(ADVANCE, (self.slot, format_lsn(mark.advance)))
            lag = lag_bytes(self._conn, self.slot)
        except psycopg.Error as error:  # the next refresh advances further
            log.info("change feed: the slot was not advanced: %s", str(error).strip())
            return
        if lag is not None:
            self._lag(lag)

    def saved(self, mark: Mark) -> dict[str, Any]:
        assert isinstance(mark, FeedMark)
        return {
            "kind": self.kind,
            "slot": self.slot,
            "advance": mark.advance,
            "covered": mark.covered,
            "position": mark.position.to_json(),
        }

    def resume(self, saved: dict[str, Any]) -> FeedMark | None:
        """The saved mark, when the slot still holds every change after it: same slot, not
        advanced past it (a slot made anew, or advanced by hand, starts later)."""
        if saved.get("kind") != self.kind or saved.get("slot") != self.slot or not self._conn:
            return None
        status = slot_status(self._conn, self.slot)
        mark = FeedMark(
            int(saved["advance"]), saved["covered"], Position.from_json(saved["position"])
        )
        if status is None or status.lost or status.confirmed is None:
            return None
        return mark if status.confirmed <= mark.advance else None

    def close(self) -> None:
        """Let go of the slot (and its lock)."""
        if self._conn is not None:
            self._conn.close()
        self._conn, self._locked = None, False

    def cancel(self) -> None:
        """From another thread, as the server stops: end a wait for the feed's connection
        and cancel the query running on it; the feed then refuses to connect again."""
        self._cancelled.set()
        conn = self._conn
        if conn is not None:
            with suppress(psycopg.Error):  # unreachable or closed: nothing runs on it
                conn.cancel_safe(timeout=1.0)

    def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect_unless_cancelled()
            self._locked = False
        return self._conn

    def _connect_unless_cancelled(self) -> Connection:
        """``connect`` on a thread of its own, waited for until it ends or the server stops
        (RefreshCancelled): an attempt cannot be interrupted, and one to a database that does
        not answer lasts --connect-timeout. A connection that comes after the stop is closed."""
        if self._cancelled.is_set():
            raise RefreshCancelled("the server is stopping")
        connected: Future[Connection] = Future()

        def attempt() -> None:
            try:
                connected.set_result(self._connect(self._url))
            except BaseException as error:  # handed over to the waiting thread
                connected.set_exception(error)

        threading.Thread(target=attempt, name="proca-stats-feed-connect", daemon=True).start()
        while True:
            try:
                connected.exception(timeout=TAKE_SLICE)  # raises only while it runs
            except TimeoutError:
                if not self._cancelled.is_set():
                    continue
                connected.add_done_callback(_close_connected)
                raise RefreshCancelled("the server is stopping") from None
            return connected.result()

    def _lock(self, conn: Connection) -> bool:
        """Take the slot's lock if not held yet; True when taken now."""
        if self._locked:
            return False
        row = conn.execute(LOCK, (self.slot,)).fetchone()
        if not (row and row[0]):
            holder = conn.execute(HOLDER, (self.slot,)).fetchone()
            by = f" (backend pid {holder[0]}, client {holder[1]})" if holder else ""
            raise FeedBusy(
                f"change feed: another proca-stats reads the replication slot {self.slot}{by}; "
                "give each replica its own --feed-slot"
            )
        self._locked = True
        return True


def _close_connected(connected: Future[Connection]) -> None:
    """Close the connection an abandoned attempt made, if it made one."""
    if connected.exception() is None:
        connected.result().close()


def open_feed(
    url: str,
    slot: str,
    *,
    create: bool = True,
    connect_timeout: float = 10.0,
    lag: Callable[[int], None] = lambda _: None,
) -> LogicalFeed:
    """A feed on the database at ``url``, its own connection made as the server's are."""

    def connect(target: str) -> Connection:
        options = connection_options("proca-stats-feed", connect_timeout)
        return psycopg.connect(target, autocommit=True, **options)

    return LogicalFeed(url, slot, connect=connect, create=create, lag=lag)


class _Sorted:
    """The transactions a peek read, sorted by the snapshots that see them."""

    def __init__(self, since: FeedMark, at: Position) -> None:
        self._since, self._at = since, at
        self.actions: set[int] = set()
        self.supporters: set[int] = set()
        self.pages = False
        self.complete = True
        self.missed = False  # seen by the held snapshot, yet not read when it was taken
        self.carried: int | None = None  # the first commit seen by neither snapshot
        self.read_to = since.advance  # the end of the last commit read

    def add(self, transaction: Transaction) -> None:
        self.read_to = max(self.read_to, transaction.end_lsn)
        xid = widen(transaction.xid, self._at.xmax)
        if self._since.position.sees(xid):
            covered = self._since.covered
            self.missed |= covered is not None and transaction.end_lsn > covered
        elif not self._at.sees(xid):
            self.carried = min(self.carried or transaction.commit_lsn, transaction.commit_lsn)
        else:
            self.pages |= bool(transaction.tables() & READ_WHOLE)
            if (transaction.overflowed | transaction.truncated) & FIGURES:
                self.complete = False
            if self.complete:
                self.actions |= transaction.rows.get("actions", set())
                self.supporters |= transaction.rows.get("supporters", set())
                if len(self.actions) + len(self.supporters) > LIMIT:
                    self.complete = False
            if not self.complete:
                self.actions.clear()
                self.supporters.clear()
