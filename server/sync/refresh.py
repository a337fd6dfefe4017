"""Incremental refresh: after a full calculation, recount only what changed, exactly.

How it stays exact. Every result describes one database snapshot, and that
snapshot is kept (snapshots.py) until the next refresh: the *held* snapshot, L.
A refresh takes a new one (N) and:

1. asks its change source (changes.py, feed.py) which actions and supporters
   changed between L and N — inserted, updated or, with the feed, deleted;
2. turns them into keys (campaign, fingerprint) — in L *and* in N, so a row
   whose campaign, supporter or fingerprint changed, or that is gone, is seen
   on both sides;
3. asks both snapshots where each key's supporter is credited (first org,
   first area, or not counted) and how the changed actions count, and applies
   the difference (delta.py). The same question asked of the same two
   snapshots always gets the same answer, so a row reported twice changes
   nothing twice;
4. recounts whole campaigns when a change cannot be expressed per key:
   a page that changed org or campaign, a campaign that became live or is new.

A refresh costs in proportion to the rows changed; past a point a full
calculation costs less (docs/sync.md gives the benchmark's figures), so when
more rows changed than ``MANY_CHANGES`` and than ``MANY_CHANGES_SHARE`` of the
actions table, the refresh is a full calculation in the same new snapshot.

Only live campaigns (status 0) are refreshed every time. A closed or ignored
campaign with changes is marked and recounted whole at ``slow_interval``.
Action pages and campaigns are small tables, read whole each time they may
have changed (extra supporters are recomputed from them). A full calculation
runs every ``full_interval`` as the safety net, and whenever the held snapshot
is lost.

After a warm start (warm.py) there is no L: the held figures come from the
state file. The first refresh then recounts whole the campaigns the changes
touch instead of comparing keys (``_rebased``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

from proca_stats.server.state.counters import CampaignCounters, Snapshot
from proca_stats.server.sync.calculation import (
    CAMPAIGNS,
    Page,
    campaign_figures,
    full_tallies,
    key_credits,
    read_pages,
)
from proca_stats.server.sync.changes import Changed, ChangesLost, ChangeSource, Mark
from proca_stats.server.sync.delta import (
    MANY_CHANGES,
    Delta,
    Touched,
    many,
    moved,
    published,
    together,
    touched,
)
from proca_stats.server.sync.held import HeldSnapshot, seen_in
from proca_stats.server.sync.snapshots import Kept, Snapshots, parts, split
from proca_stats.server.sync.tally import CampaignTally
from proca_stats.server.sync.warm import HeldFigures, campaigns_changed

log = logging.getLogger(__name__)

__all__ = ["MANY_CHANGES", "HeldFigures", "RefreshReport", "Refresher"]

LIVE = 0  # campaigns.status


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
    feed: str = ""  # the change source: "logical" or "updated-at"


@dataclass
class _State:
    """The figures as of one snapshot, in their parts; ``kept`` None: loaded from a state
    file, the snapshot itself long gone."""

    kept: Kept | None
    tallies: dict[int, CampaignTally]
    figures: dict[int, CampaignCounters]
    statuses: dict[int, int]
    pages: dict[int, Page]
    mark: Mark  # where the change source continues from


class Refresher:
    """Produces snapshots, incrementally when it can.

    Use: ``run()`` computes a new snapshot and keeps it, so that the handover
    can look action ids up in it (``seen``); then ``settle()`` makes it the
    held snapshot the next run compares with, or ``abandon()`` drops
    everything after an error (the next run is then a full calculation).
    ``persist``, when given, is handed each settled snapshot's ``HeldFigures`` before the
    change source may forget what came before it (warm.py).
    """

    def __init__(
        self,
        snapshots: Snapshots,
        changes: ChangeSource,
        *,
        full_interval: float,
        slow_interval: float,
        persist: Callable[[HeldFigures], None] | None = None,
    ) -> None:
        """Times in seconds; ``full_interval`` 0 means never after the first."""
        self._snapshots = snapshots
        self._changes = changes
        self._full_interval = full_interval
        self._slow_interval = slow_interval
        self._persist = persist
        self._state: _State | None = None  # the held snapshot's figures
        self._loaded: _State | None = None  # from a state file, its mark still JSON
        self._next: _State | None = None  # the last run's, until settled
        self._last_full = 0.0
        self._last_slow = 0.0
        self._stale: set[int] = set()  # closed or ignored campaigns with changes not counted

    def run(
        self, *, full: bool = False, increments_before: int = 0
    ) -> tuple[Snapshot, RefreshReport]:
        """Compute a new snapshot: full when asked, due or without a held snapshot."""
        started = time.monotonic()
        due = bool(self._full_interval and started - self._last_full >= self._full_interval)
        fresh = self._changes.prepare()
        if self._loaded is not None:
            fresh = not self._resume(self._loaded)
        full = fresh or full or due or self._state is None
        try:
            state, report = self._compute(full, started)
        except ChangesLost as lost:
            log.info("sync: %s; a full calculation in a new snapshot", lost)
            self._changes.prepare()
            state, report = self._compute(True, started)
        assert state.kept is not None
        self._next = state
        pages = {page_id: page[0] for page_id, page in state.pages.items()}
        snapshot = Snapshot(dict(state.figures), state.kept.taken_at, increments_before, pages)
        seconds = time.monotonic() - started
        rows_read = sum(self._snapshots.rows_read)
        report = replace(report, seconds=seconds, rows_read=rows_read, feed=self._changes.kind)
        return snapshot, report

    def _compute(self, full: bool, started: float) -> tuple[_State, RefreshReport]:
        kept = self._snapshots.keep()
        try:
            if full or self._state is None:
                return self._full(kept, started)
            if self._state.kept is None:
                return self._rebased(kept, self._state, started)
            return self._incremental(kept, self._state, started)
        except BaseException:
            self._snapshots.release(kept.keeper)
            raise

    def seen(self, action_ids: Collection[int]) -> set[int]:
        """Which of these action ids the snapshot of the last ``run()`` sees."""
        assert self._next is not None
        assert self._next.kept is not None
        with self._snapshots.reading(self._next.kept.snapshot_id) as cur:
            return seen_in(cur, action_ids)

    def held(self) -> HeldSnapshot:
        """The snapshot of the last ``run()`` for other threads to ask once it is swapped in:
        it can be asked until the next refresh releases it, after swapping its own in (or
        failing)."""
        assert self._next is not None
        assert self._next.kept is not None
        return HeldSnapshot(self._snapshots, self._next.kept.snapshot_id)

    def settle(self) -> None:
        """Hold the last run's snapshot for the next run; release the one held before.
        Then persist it, and only then let the change source forget what came before it."""
        assert self._next is not None
        if self._state is not None and self._state.kept is not None:
            self._snapshots.release(self._state.kept.keeper)
        self._state, self._next = self._next, None
        if self._persist is not None:
            self._persist(self.held_figures())
        self._changes.settled(self._state.mark)

    def held_figures(self) -> HeldFigures:
        """The held snapshot's figures and marks, for a state file."""
        state = self._state
        assert state is not None
        assert state.kept is not None
        return HeldFigures(
            taken_at=state.kept.taken_at,
            tallies=state.tallies,
            statuses=state.statuses,
            pages=state.pages,
            source=self._changes.saved(state.mark),
            full_age=time.monotonic() - self._last_full,
            stale=frozenset(self._stale),
        )

    def load(self, held: HeldFigures) -> Snapshot:
        """Figures read back from a state file, as a snapshot to serve now. The next run
        continues from them when the change source still can (it asks the database, which
        must not hold the figures back); else it is a full calculation."""
        tallies = {cid: tally.copy() for cid, tally in held.tallies.items()}
        figures = published({}, {}, tallies, held.pages, set(tallies))
        self._loaded = _State(None, tallies, figures, held.statuses, held.pages, held.source)
        self._stale = set(held.stale)
        self._last_full = self._last_slow = time.monotonic() - held.full_age
        return Snapshot(dict(figures), held.taken_at)

    def _resume(self, loaded: _State) -> bool:
        """Hold the loaded figures if the change source continues from their saved mark."""
        self._loaded = None
        assert isinstance(loaded.mark, dict)
        mark = self._changes.resume(loaded.mark)
        if mark is None:
            log.info("warm start: the change source cannot continue from the saved figures")
            return False
        loaded.mark = mark
        self._state = loaded
        return True

    def abandon(self) -> None:
        """After an error: release every connection; the next run is a full calculation."""
        for state in (self._next, self._state):
            if state is not None and state.kept is not None:
                self._snapshots.release(state.kept.keeper)
        self._snapshots.release_reading()
        self._state = self._next = None
        self._stale.clear()

    def close(self) -> None:
        """Release everything; the change source lets go of its slot."""
        self.abandon()
        self._changes.close()

    def cancel(self) -> None:
        """Cancel the running queries from another thread: the server is stopping."""
        self._snapshots.cancel()
        self._changes.cancel()

    def _full(self, kept: Kept, started: float) -> tuple[_State, RefreshReport]:
        with self._snapshots.reading(kept.snapshot_id) as cur:
            tallies, statuses, pages = full_tallies(cur)
            mark = self._changes.mark(cur, kept.position)
        self._last_full = self._last_slow = started  # intervals run from start to start
        self._stale.clear()
        figures = {cid: t.counters() for cid, t in tallies.items()}
        state = _State(kept, tallies, figures, statuses, pages, mark)
        return state, RefreshReport("full", recounted=len(tallies))

    def _changes_in(
        self, kept: Kept, old: _State
    ) -> tuple[Changed, dict[int, int], dict[int, Page]] | None:
        """The changed rows since ``old`` and the campaigns and pages as of ``kept`` (read
        again only when they may have changed); None when a full calculation is due instead."""
        with self._snapshots.reading(kept.snapshot_id) as cur:
            changed = self._changes.changed(cur, old.mark, kept.position)
            if not changed.complete or many(cur, len(changed.actions) + len(changed.supporters)):
                return None
            if not changed.pages:
                return changed, old.statuses, old.pages
            return changed, dict(cur.execute(CAMPAIGNS).fetchall()), read_pages(cur)

    def _incremental(self, kept: Kept, old: _State, started: float) -> tuple[_State, RefreshReport]:
        assert old.kept is not None
        found = self._changes_in(kept, old)
        if found is None:  # the full calculation reads campaigns and pages itself
            return self._full(kept, started)
        changed, statuses, pages = found
        (new_keys, new_actions), (old_keys, old_actions) = self._touched(changed, kept, old.kept)
        recount = moved(old.statuses, old.pages, statuses, pages, LIVE)

        def by_delta(campaign_id: int) -> bool:
            """Whether the campaign's figures change by delta now (else recounted or later)."""
            return (
                campaign_id not in recount
                and campaign_id in statuses
                and old.statuses.get(campaign_id) == LIVE
            )

        keys = new_keys | old_keys
        affected = {k[0] for k in keys} | {kind[0] for kind in (*old_actions, *new_actions)}
        recount = self._with_stale(recount, affected, statuses, by_delta, started)
        keys = {k for k in keys if by_delta(k[0])}
        ordered = sorted(keys)
        key_parts = split(ordered, parts(len(ordered)))
        before, after = (
            {key: credit for part in answers for key, credit in part.items()}
            for answers in self._snapshots.ask(
                key_parts, key_credits, old.kept.snapshot_id, kept.snapshot_id
            )
        )
        delta = Delta(dict(old.tallies))
        delta.credit(keys, before, after)
        live = {c for c in affected if by_delta(c)}
        delta.count(old_actions, -1, live)
        delta.count(new_actions, 1, live)
        state = self._recounted(kept, old, delta, recount, statuses, pages, changed.mark)
        report = RefreshReport(
            "incremental",
            len(changed.actions),
            len(changed.supporters),
            len(keys),
            len(recount),
            key_parts=len(key_parts),
        )
        return state, report

    def _rebased(self, kept: Kept, old: _State, started: float) -> tuple[_State, RefreshReport]:
        """The first refresh after a warm start: without the old snapshot to compare keys
        in, the campaigns the changes touch are recounted whole (warm.py says how they are
        found, deletes included)."""
        found = self._changes_in(kept, old)
        if found is None:
            return self._full(kept, started)
        changed, statuses, pages = found
        recount = moved(old.statuses, old.pages, statuses, pages, LIVE)
        if changed.actions or changed.supporters:
            with self._snapshots.reading(kept.snapshot_id) as cur:
                recount |= campaigns_changed(cur, changed.actions, changed.supporters, old.tallies)
        recount &= statuses.keys()
        self._stale -= recount
        state = self._recounted(
            kept, old, Delta(dict(old.tallies)), recount, statuses, pages, changed.mark
        )
        report = RefreshReport(
            "incremental", len(changed.actions), len(changed.supporters), 0, len(recount)
        )
        return state, report

    def _recounted(
        self,
        kept: Kept,
        old: _State,
        delta: Delta,
        recount: set[int],
        statuses: dict[int, int],
        pages: dict[int, Page],
        mark: Mark,
    ) -> _State:
        """The new state: the delta's tallies, with ``recount`` counted whole in ``kept``,
        the deleted campaigns gone and the new ones there."""
        recounted = {}
        if recount:
            with self._snapshots.reading(kept.snapshot_id) as cur:
                recounted = campaign_figures(cur, sorted(recount))
        tallies = delta.tallies
        for campaign_id in recount:
            tallies[campaign_id] = recounted.get(campaign_id) or CampaignTally()
        for campaign_id in tallies.keys() - statuses.keys():  # deleted campaigns
            del tallies[campaign_id]
        for campaign_id in statuses.keys() - tallies.keys():
            tallies[campaign_id] = CampaignTally()
        figures = published(old.figures, old.pages, tallies, pages, delta.touched | recount)
        return _State(kept, tallies, figures, statuses, pages, mark)

    def _touched(self, changed: Changed, kept: Kept, old: Kept) -> tuple[Touched, Touched]:
        """The keys and action kinds the changed rows touch, in the new snapshot and the old."""
        count = parts(len(changed.actions) + len(changed.supporters))
        changed_parts = list(
            zip(split(changed.actions, count), split(changed.supporters, count), strict=True)
        )
        new, old_touched = self._snapshots.ask(
            changed_parts, touched, kept.snapshot_id, old.snapshot_id
        )
        return together(new), together(old_touched)

    def _with_stale(
        self,
        recount: set[int],
        affected: set[int],
        statuses: dict[int, int],
        by_delta: Callable[[int], bool],
        started: float,
    ) -> set[int]:
        """``recount`` with the closed and ignored campaigns whose changes waited, when the
        slow refresh is due; the others with changes are marked to wait for it."""
        self._stale |= {c for c in affected if c not in recount and c in statuses}
        self._stale -= {c for c in affected if by_delta(c)}
        if self._slow_interval == 0 or started - self._last_slow >= self._slow_interval:
            recount = recount | self._stale
            self._stale = set()
            self._last_slow = started
        recount = recount & statuses.keys()
        self._stale -= recount
        return recount
