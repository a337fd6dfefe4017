"""Incremental refresh: after a full calculation, recount only what changed, exactly.

How it stays exact. Every result describes one database snapshot, and that
snapshot is kept (``pg_export_snapshot`` in a transaction that stays open and
reads no table) until the next refresh: the *held* snapshot, L. A refresh
takes a new one (N) and:

1. finds the actions and supporters changed since L: those whose
   ``updated_at`` is at or after the newest ``updated_at`` L held, less an
   overlap (``overlap``) for transactions that committed late;
2. turns them into keys (campaign, fingerprint) — in L *and* in N, so a row
   whose campaign, supporter or fingerprint changed is seen on both sides;
3. asks both snapshots where each key's supporter is credited (first org,
   first area, or not counted) and how the changed actions count, and applies
   the difference. The same question asked of the same two snapshots always
   gets the same answer, so a row seen twice (overlap) changes nothing twice;
4. recounts whole campaigns when a change cannot be expressed per key:
   a page that changed org or campaign, a campaign that became live or is new.

A refresh costs in proportion to the rows changed; past a point a full
calculation costs less (on the benchmark's 1,500,000 actions, 1,000 changed
rows cost 3 to 5 % of one and 100,000 about twice one), so when more rows
changed than ``MANY_CHANGES`` and than ``MANY_CHANGES_SHARE`` of the actions
table, the refresh is a full calculation in the same new snapshot.

Only live campaigns (status 0) are refreshed every time. A closed or ignored
campaign with changes is marked and recounted whole at ``slow_interval``.
Action pages and campaigns are small tables, read whole each time (extra
supporters are recomputed from them).

What it relies on: Proca sets ``updated_at`` on every insert and update of
actions and supporters. Deleted rows leave no trace, and neither does a
change that does not touch ``updated_at``: a full calculation runs every
``full_interval`` as the safety net, and whenever the held snapshot is lost.
The keeping transaction is read-only and holds no lock; it keeps PostgreSQL
from vacuuming rows deleted since it started, for one refresh interval (an
``idle_in_transaction_session_timeout`` shorter than that interval ends it,
and the next refresh is then a full calculation).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool, PoolTimeout

from proca_stats.server.state.counters import CampaignCounters, Snapshot
from proca_stats.server.sync.calculation import (
    CAMPAIGNS,
    COUNTED,
    LATEST_CHANGES,
    CountingCursor,
    Cursor,
    Key,
    Page,
    campaign_figures,
    extra_supporters,
    full_tallies,
    keep_snapshot,
    key_credits,
    read_in,
    read_pages,
)
from proca_stats.server.sync.tally import CampaignTally

log = logging.getLogger(__name__)


LIVE = 0  # campaigns.status

# Changed rows past which a full calculation is cheaper (see above): both must be passed.
MANY_CHANGES = 10_000
MANY_CHANGES_SHARE = 0.02
# The planner's estimate of the actions table's size (-1 before it was ever analyzed).
ACTIONS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = 'actions'::regclass"

CHANGED_ACTIONS = "SELECT id, updated_at FROM actions WHERE updated_at >= %s"
CHANGED_SUPPORTERS = "SELECT id, updated_at FROM supporters WHERE updated_at >= %s"
# What the changed rows touch, in the snapshot asked: one row per changed action
# (its campaign, type, whether it counts, and its key when it makes a counted
# pair) and one per counted pair of a changed supporter (its key only). A key's
# figures depend on its counted pairs only: a row that makes no counted pair in
# either snapshot cannot change them, so it gives no key on either side.
# Arrays go in binary (%b): a thousand ids or fingerprints cost nothing to send.
TOUCHED = f"""
    SELECT true, a.campaign_id, a.action_type, a.processing_status IN (3, 4) AND NOT a.testing,
           CASE WHEN {COUNTED} THEN s.fingerprint END
    FROM actions a LEFT JOIN supporters s ON s.id = a.supporter_id
    WHERE a.id = ANY(%(actions)b)
    UNION ALL
    SELECT false, a.campaign_id, NULL, NULL, s.fingerprint
    FROM supporters s JOIN actions a ON a.supporter_id = s.id
    WHERE s.id = ANY(%(supporters)b) AND {COUNTED}
"""
SEEN = "SELECT id FROM actions WHERE id = ANY(%b)"

# Looking keys up waits on page reads at random places when the database's pages are
# not cached (about 0.1 ms each on the benchmark's machine, several per key): spread
# over a few connections, the reads overlap. A key set is split in parts of at least
# LOOKUP_PART keys, on at most LOOKUP_CONNECTIONS connections.
LOOKUP_CONNECTIONS = 4
LOOKUP_PART = 128
# How long a part waits for a pool connection before it is read on the reading one, after
# the others: a database that refuses more connections slows a refresh, it does not fail it.
LOOKUP_WAIT = 1.0
P = TypeVar("P")  # a part of what is read
A = TypeVar("A")  # the answer about it
# The most connections a Refresher holds at once: two keep snapshots (the held one and
# the next), one reads in them, and the look-ups add up to LOOKUP_CONNECTIONS - 1.
CONNECTIONS = 3 + LOOKUP_CONNECTIONS - 1


class RefreshCancelled(Exception):
    """The refresh was cancelled because the server is stopping."""


@dataclass(frozen=True)
class RefreshReport:
    """What one refresh did, for the log and the benchmark."""

    kind: str  # "full" or "incremental"
    changed_actions: int = 0
    changed_supporters: int = 0
    keys: int = 0
    recounted: int = 0
    seconds: float = 0.0
    key_parts: int = 0  # into how many parts the keys were split, each read on its own connection
    rows_read: int = 0  # rows PostgreSQL sent: already aggregated, so far fewer than it read


@dataclass
class _State:
    """The figures as of one kept snapshot, in their parts."""

    keeper: psycopg.Connection[TupleRow]  # its open transaction keeps the snapshot
    snapshot_id: str
    tallies: dict[int, CampaignTally]
    figures: dict[int, CampaignCounters]
    statuses: dict[int, int]
    pages: dict[int, Page]
    actions_mark: datetime | None  # newest actions.updated_at in the snapshot
    supporters_mark: datetime | None


class Refresher:
    """Produces snapshots, incrementally when it can; owns the kept snapshots.

    Use: ``run()`` computes a new snapshot and keeps it, so that the handover
    can look action ids up in it (``seen``); then ``settle()`` makes it the
    held snapshot the next run compares with, or ``abandon()`` drops
    everything after an error (the next run is then a full calculation).

    A snapshot is kept by a transaction that reads no table (so it holds no
    lock that could stall Proca's migrations); the queries run in short
    transactions on another connection that import it by id.
    """

    def __init__(
        self,
        pool: ConnectionPool,
        *,
        connect_timeout: float,
        full_interval: float,
        slow_interval: float,
        overlap: float,
        timeout: float = 0.0,
    ) -> None:
        """Times in seconds; ``full_interval`` 0 means never after the first; ``timeout``
        cancels a query that runs longer (0: never)."""
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._timeout_ms = round(timeout * 1000)
        self._full_interval = full_interval
        self._slow_interval = slow_interval
        self._overlap = timedelta(seconds=overlap)
        self._state: _State | None = None  # the held snapshot's figures
        self._next: _State | None = None  # the last run's, until settled
        self._work: psycopg.Connection[TupleRow] | None = None  # reads in kept snapshots
        self._last_full = 0.0
        self._last_slow = 0.0
        self._stale: set[int] = set()  # closed or ignored campaigns with changes not counted
        # Guards what another thread may touch: ``cancel()`` runs on the stopping thread.
        self._lock = threading.Lock()
        self._held: set[psycopg.Connection[TupleRow]] = set()  # taken from the pool
        self._cancelled = False
        self._rows_read: list[int] = []  # per cursor of the running refresh

    def run(
        self, *, full: bool = False, increments_before: int = 0
    ) -> tuple[Snapshot, RefreshReport]:
        """Compute a new snapshot: full when asked, due or without a held snapshot."""
        started = time.monotonic()
        due = self._full_interval and started - self._last_full >= self._full_interval
        self._rows_read = []
        keeper = self._take(self._connect_timeout)
        try:
            if self._work is None:
                self._work = self._take(self._connect_timeout)
            taken_at, snapshot_id = keep_snapshot(keeper)
            if full or due or self._state is None:
                state, report = self._full(keeper, snapshot_id, started)
            else:
                state, report = self._incremental(keeper, snapshot_id, self._state, started)
        except BaseException:
            self._release(keeper)
            raise
        self._next = state
        snapshot = Snapshot(dict(state.figures), taken_at, increments_before)
        seconds = time.monotonic() - started
        return snapshot, replace(report, seconds=seconds, rows_read=sum(self._rows_read))

    def seen(self, action_ids: Collection[int]) -> set[int]:
        """Which of these action ids the snapshot of the last ``run()`` sees."""
        assert self._next is not None
        with self._reading(self._next.snapshot_id) as cur:
            return {row[0] for row in cur.execute(SEEN, (list(action_ids),))}

    def settle(self) -> None:
        """Hold the last run's snapshot for the next run; release the one held before."""
        assert self._next is not None
        if self._state is not None:
            self._release(self._state.keeper)
        self._state, self._next = self._next, None

    def abandon(self) -> None:
        """After an error: release every connection; the next run is a full calculation."""
        for state in (self._next, self._state):
            if state is not None:
                self._release(state.keeper)
        if self._work is not None:
            self._release(self._work)
        self._state = self._next = self._work = None
        self._stale.clear()

    close = abandon

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

    def _take(self, timeout: float) -> psycopg.Connection[TupleRow]:
        """A pool connection, held until ``_release`` (so that ``cancel`` can reach it)."""
        self._check_cancelled()
        conn = self._pool.getconn(timeout=timeout)
        with self._lock:
            self._held.add(conn)
        return conn

    def _check_cancelled(self) -> None:
        if self._cancelled:
            raise RefreshCancelled("the server is stopping")

    @contextmanager
    def _read_in(
        self, conn: psycopg.Connection[TupleRow], snapshot_id: str
    ) -> Iterator[CountingCursor]:
        """``read_in`` that counts the rows read, and starts nothing once cancelled."""
        self._check_cancelled()
        with read_in(conn, snapshot_id, self._timeout_ms) as cur:
            yield cur
            self._rows_read.append(cur.rows_read)

    def _reading(self, snapshot_id: str) -> AbstractContextManager[CountingCursor]:
        assert self._work is not None
        return self._read_in(self._work, snapshot_id)

    def _ask(
        self, parts: Sequence[P], ask: Callable[[Cursor, P], A], *snapshot_ids: str
    ) -> list[list[A]]:
        """``ask`` each snapshot about each part, the parts on as many connections at once
        (the reading one, and pool connections for the others). Each connection asks the
        snapshots in turn about its part, the later ones finding its pages read. The
        answers, by snapshot then part."""
        assert self._work is not None

        def on(conn: psycopg.Connection[TupleRow], part: P) -> list[A]:
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
                self._release(conn)

        with ThreadPoolExecutor(max(1, len(parts) - 1), "proca-stats-read") as threads:
            others = [threads.submit(on_pool, part) for part in parts[1:]]
            by_part = [on(self._work, parts[0])]
            for other, part in zip(others, parts[1:], strict=True):
                answers = other.result()
                by_part.append(on(self._work, part) if answers is None else answers)
        return [list(answers) for answers in zip(*by_part, strict=True)]

    def _release(self, conn: psycopg.Connection[TupleRow]) -> None:
        with self._lock:
            self._held.discard(conn)
        try:
            if not conn.closed:
                conn.rollback()
        except psycopg.Error:
            pass  # a broken connection: the pool discards it
        self._pool.putconn(conn)

    def _full(
        self, keeper: psycopg.Connection[TupleRow], snapshot_id: str, started: float
    ) -> tuple[_State, RefreshReport]:
        with self._reading(snapshot_id) as cur:
            tallies, statuses, pages = full_tallies(cur)
            actions_mark, supporters_mark = next(cur.execute(LATEST_CHANGES))
        self._last_full = self._last_slow = started  # intervals run from start to start
        self._stale.clear()
        figures = {cid: t.counters() for cid, t in tallies.items()}
        state = _State(
            keeper, snapshot_id, tallies, figures, statuses, pages, actions_mark, supporters_mark
        )
        return state, RefreshReport("full", recounted=len(tallies))

    def _incremental(
        self,
        keeper: psycopg.Connection[TupleRow],
        snapshot_id: str,
        old: _State,
        started: float,
    ) -> tuple[_State, RefreshReport]:
        with self._reading(snapshot_id) as cur:
            actions, actions_mark = _changed(cur, CHANGED_ACTIONS, old.actions_mark, self._overlap)
            supporters, supporters_mark = _changed(
                cur, CHANGED_SUPPORTERS, old.supporters_mark, self._overlap
            )
            many = _many(cur, len(actions) + len(supporters))
            if not many:
                statuses: dict[int, int] = dict(cur.execute(CAMPAIGNS).fetchall())
                pages = read_pages(cur)
        if many:  # the full calculation reads campaigns and pages itself
            return self._full(keeper, snapshot_id, started)
        count = _parts(len(actions) + len(supporters))
        changed_parts = list(zip(_split(actions, count), _split(supporters, count), strict=True))
        new_touched, old_touched = self._ask(changed_parts, _touched, snapshot_id, old.snapshot_id)
        new_keys, new_actions = _together(new_touched)
        old_keys, old_actions = _together(old_touched)

        # Campaigns recounted whole: new, just live again, or whose pages moved.
        recount = {c for c, s in statuses.items() if s == LIVE and old.statuses.get(c) != LIVE}
        for page_id in old.pages.keys() | pages.keys():
            page_was, page_now = old.pages.get(page_id), pages.get(page_id)
            if page_was is None or page_now is None or page_was[:2] != page_now[:2]:
                recount.update(p[0] for p in (page_was, page_now) if p is not None)
        slow_due = self._slow_interval == 0 or started - self._last_slow >= self._slow_interval

        def by_delta(campaign_id: int) -> bool:
            """Whether the campaign's figures change by delta now (else recounted or later)."""
            return (
                campaign_id not in recount
                and campaign_id in statuses
                and old.statuses.get(campaign_id) == LIVE
            )

        keys = new_keys | old_keys
        # Closed and ignored campaigns with changes wait for the slow refresh.
        affected = {k[0] for k in keys} | {c for c, _, _ in (*old_actions, *new_actions)}
        self._stale |= {c for c in affected if c not in recount and c in statuses}
        self._stale -= {c for c in affected if by_delta(c)}
        if slow_due:
            recount |= self._stale
            self._stale = set()
            self._last_slow = started
        recount &= statuses.keys()
        self._stale -= recount
        keys = {k for k in keys if by_delta(k[0])}
        ordered = sorted(keys)
        key_parts = _split(ordered, _parts(len(ordered)))
        before, after = (
            {key: credit for part in answers for key, credit in part.items()}
            for answers in self._ask(key_parts, key_credits, old.snapshot_id, snapshot_id)
        )
        recounted = {}
        if recount:
            with self._reading(snapshot_id) as cur:
                recounted = campaign_figures(cur, sorted(recount))

        tallies = dict(old.tallies)
        touched: set[int] = set()

        def tally(campaign_id: int) -> CampaignTally:
            """The campaign's tally to change by delta, copied on first write."""
            if campaign_id not in touched:
                touched.add(campaign_id)
                tallies[campaign_id] = (tallies.get(campaign_id) or CampaignTally()).copy()
            return tallies[campaign_id]

        for key in keys:
            was, now = before.get(key), after.get(key)
            if was != now:
                if was is not None:
                    tally(key[0]).credit(was, -1)
                if now is not None:
                    tally(key[0]).credit(now, 1)
        for counted_actions, sign in ((old_actions, -1), (new_actions, 1)):
            for (campaign_id, action_type, counts), n in counted_actions.items():
                if counts and by_delta(campaign_id):
                    tally(campaign_id).count_actions(action_type, sign * n)

        for campaign_id in recount:
            tallies[campaign_id] = recounted.get(campaign_id) or CampaignTally()
        for campaign_id in tallies.keys() - statuses.keys():  # deleted campaigns
            del tallies[campaign_id]
        for campaign_id in statuses.keys() - tallies.keys():
            tallies[campaign_id] = CampaignTally()

        # Extra supporters, from the pages read whole.
        extra = extra_supporters(pages.values())
        old_extra = extra_supporters(old.pages.values())
        changed = touched | recount
        for campaign_id in extra.keys() | old_extra.keys():
            if extra.get(campaign_id) != old_extra.get(campaign_id):
                changed.add(campaign_id)
        figures = dict(old.figures)
        for campaign_id in old.figures.keys() - tallies.keys():
            del figures[campaign_id]
        for campaign_id in changed | (tallies.keys() - figures.keys()):
            if campaign_id in tallies:
                if campaign_id not in touched and campaign_id not in recount:
                    tallies[campaign_id] = tallies[campaign_id].copy()
                tallies[campaign_id].extra = extra.get(campaign_id, {})
                figures[campaign_id] = tallies[campaign_id].counters()
        state = _State(
            keeper, snapshot_id, tallies, figures, statuses, pages, actions_mark, supporters_mark
        )
        report = RefreshReport(
            "incremental",
            len(actions),
            len(supporters),
            len(keys),
            len(recount),
            key_parts=len(key_parts),
        )
        return state, report


def _changed(
    cur: psycopg.Cursor[TupleRow], query: str, mark: datetime | None, overlap: timedelta
) -> tuple[list[int], datetime | None]:
    """Ids of rows changed at or after ``mark`` less ``overlap``, and the new mark."""
    # Without a mark the table was empty: everything in it is new.
    since = datetime.min if mark is None else mark - overlap
    ids: list[int] = []
    newest = mark
    for row_id, updated_at in cur.execute(query, (since,)):
        ids.append(row_id)
        if newest is None or updated_at > newest:
            newest = updated_at
    return ids, newest


def _many(cur: psycopg.Cursor[TupleRow], changed: int) -> bool:
    """Whether so many rows changed that a full calculation costs less than a refresh."""
    if changed <= MANY_CHANGES:
        return False
    estimate = next(cur.execute(ACTIONS_ESTIMATE))[0]
    return bool(changed > MANY_CHANGES_SHARE * estimate)


ActionKind = tuple[int, str, bool]  # (campaign id, action type, whether it counts)


def _parts(size: int) -> int:
    """Into how many parts ``size`` rows or keys to read are split (see LOOKUP_CONNECTIONS)."""
    return max(1, min(LOOKUP_CONNECTIONS, size // LOOKUP_PART))


def _split(items: list[P], count: int) -> list[list[P]]:
    """``items`` dealt into ``count`` parts."""
    return [items[i::count] for i in range(count)]


def _touched(
    cur: psycopg.Cursor[TupleRow], changed: tuple[list[int], list[int]]
) -> tuple[set[Key], Counter[ActionKind]]:
    """The keys the changed rows (action ids, supporter ids) make counted pairs in, and the
    changed actions by kind."""
    actions, supporters = changed
    keys: set[Key] = set()
    kinds: Counter[ActionKind] = Counter()
    if not actions and not supporters:
        return keys, kinds
    rows = cur.execute(TOUCHED, {"actions": actions, "supporters": supporters})
    for is_action, campaign_id, action_type, counts, fingerprint in rows:
        if fingerprint is not None:
            keys.add((campaign_id, bytes(fingerprint)))
        if is_action:
            kinds[campaign_id, action_type, counts] += 1
    return keys, kinds


def _together(
    parts: list[tuple[set[Key], Counter[ActionKind]]],
) -> tuple[set[Key], Counter[ActionKind]]:
    """The parts' touched keys and changed actions, as one."""
    keys: set[Key] = set()
    kinds: Counter[ActionKind] = Counter()
    for part_keys, part_kinds in parts:
        keys |= part_keys
        kinds.update(part_kinds)
    return keys, kinds
