"""Incremental refresh: after a full calculation, recount only what changed, exactly.

How it stays exact. Every result describes one database snapshot, and that
snapshot is kept (snapshots.py) until the next refresh: the *held* snapshot, L.
A refresh takes a new one (N) and:

1. asks its change source (changes.py) which actions and supporters changed
   between L and N;
2. turns them into keys (campaign, fingerprint) — in L *and* in N, so a row
   whose campaign, supporter or fingerprint changed is seen on both sides;
3. asks both snapshots where each key's supporter is credited (first org,
   first area, or not counted) and how the changed actions count, and applies
   the difference. The same question asked of the same two snapshots always
   gets the same answer, so a row reported twice changes nothing twice;
4. recounts whole campaigns when a change cannot be expressed per key:
   a page that changed org or campaign, a campaign that became live or is new.

A refresh costs in proportion to the rows changed; past a point a full
calculation costs less (docs/sync.md gives the benchmark's figures), so when
more rows changed than ``MANY_CHANGES`` and than ``MANY_CHANGES_SHARE`` of the
actions table, the refresh is a full calculation in the same new snapshot.

Only live campaigns (status 0) are refreshed every time. A closed or ignored
campaign with changes is marked and recounted whole at ``slow_interval``.
Action pages and campaigns are small tables, read whole each time (extra
supporters are recomputed from them). A full calculation runs every
``full_interval`` as the safety net, and whenever the held snapshot is lost.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace

from proca_stats.server.state.counters import CampaignCounters, Snapshot
from proca_stats.server.sync.calculation import (
    CAMPAIGNS,
    COUNTED,
    Cursor,
    Key,
    Page,
    campaign_figures,
    extra_supporters,
    full_tallies,
    key_credits,
    read_pages,
)
from proca_stats.server.sync.changes import Changed, ChangeSource, Mark
from proca_stats.server.sync.held import HeldSnapshot, seen_in
from proca_stats.server.sync.snapshots import Kept, Snapshots, parts, split
from proca_stats.server.sync.tally import CampaignTally, Credit

log = logging.getLogger(__name__)


LIVE = 0  # campaigns.status

# Changed rows past which a full calculation is cheaper (see above): both must be passed.
MANY_CHANGES = 10_000
MANY_CHANGES_SHARE = 0.02
# The planner's estimate of the actions table's size (-1 before it was ever analyzed).
ACTIONS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = 'actions'::regclass"

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

ActionKind = tuple[int, str, bool]  # (campaign id, action type, whether it counts)
Touched = tuple[set[Key], Counter[ActionKind]]


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

    kept: Kept
    tallies: dict[int, CampaignTally]
    figures: dict[int, CampaignCounters]
    statuses: dict[int, int]
    pages: dict[int, Page]
    mark: Mark  # where the change source continues from


@dataclass
class _Delta:
    """A refresh's changes to the held tallies: copies of the tallies it changes."""

    tallies: dict[int, CampaignTally]
    touched: set[int] = field(default_factory=set)

    def tally(self, campaign_id: int) -> CampaignTally:
        """The campaign's tally to change, copied on first write (the held one's counters
        are out, so it never changes)."""
        if campaign_id not in self.touched:
            self.touched.add(campaign_id)
            self.tallies[campaign_id] = (self.tallies.get(campaign_id) or CampaignTally()).copy()
        return self.tallies[campaign_id]


class Refresher:
    """Produces snapshots, incrementally when it can.

    Use: ``run()`` computes a new snapshot and keeps it, so that the handover
    can look action ids up in it (``seen``); then ``settle()`` makes it the
    held snapshot the next run compares with, or ``abandon()`` drops
    everything after an error (the next run is then a full calculation).
    """

    def __init__(
        self,
        snapshots: Snapshots,
        changes: ChangeSource,
        *,
        full_interval: float,
        slow_interval: float,
    ) -> None:
        """Times in seconds; ``full_interval`` 0 means never after the first."""
        self._snapshots = snapshots
        self._changes = changes
        self._full_interval = full_interval
        self._slow_interval = slow_interval
        self._state: _State | None = None  # the held snapshot's figures
        self._next: _State | None = None  # the last run's, until settled
        self._last_full = 0.0
        self._last_slow = 0.0
        self._stale: set[int] = set()  # closed or ignored campaigns with changes not counted

    def run(
        self, *, full: bool = False, increments_before: int = 0
    ) -> tuple[Snapshot, RefreshReport]:
        """Compute a new snapshot: full when asked, due or without a held snapshot."""
        started = time.monotonic()
        due = self._full_interval and started - self._last_full >= self._full_interval
        kept = self._snapshots.keep()
        try:
            if full or due or self._state is None:
                state, report = self._full(kept, started)
            else:
                state, report = self._incremental(kept, self._state, started)
        except BaseException:
            self._snapshots.release(kept.keeper)
            raise
        self._next = state
        pages = {page_id: page[0] for page_id, page in state.pages.items()}
        snapshot = Snapshot(dict(state.figures), kept.taken_at, increments_before, pages)
        seconds = time.monotonic() - started
        rows_read = sum(self._snapshots.rows_read)
        return snapshot, replace(report, seconds=seconds, rows_read=rows_read)

    def seen(self, action_ids: Collection[int]) -> set[int]:
        """Which of these action ids the snapshot of the last ``run()`` sees."""
        assert self._next is not None
        with self._snapshots.reading(self._next.kept.snapshot_id) as cur:
            return seen_in(cur, action_ids)

    def held(self) -> HeldSnapshot:
        """The snapshot of the last ``run()`` for other threads to ask once it is swapped in:
        it can be asked until the next refresh releases it, after swapping its own in (or
        failing)."""
        assert self._next is not None
        return HeldSnapshot(self._snapshots, self._next.kept.snapshot_id)

    def settle(self) -> None:
        """Hold the last run's snapshot for the next run; release the one held before."""
        assert self._next is not None
        if self._state is not None:
            self._snapshots.release(self._state.kept.keeper)
        self._state, self._next = self._next, None

    def abandon(self) -> None:
        """After an error: release every connection; the next run is a full calculation."""
        for state in (self._next, self._state):
            if state is not None:
                self._snapshots.release(state.kept.keeper)
        self._snapshots.release_reading()
        self._state = self._next = None
        self._stale.clear()

    close = abandon

    def cancel(self) -> None:
        """Cancel the running queries from another thread: the server is stopping."""
        self._snapshots.cancel()

    def _full(self, kept: Kept, started: float) -> tuple[_State, RefreshReport]:
        with self._snapshots.reading(kept.snapshot_id) as cur:
            tallies, statuses, pages = full_tallies(cur)
            mark = self._changes.mark(cur)
        self._last_full = self._last_slow = started  # intervals run from start to start
        self._stale.clear()
        figures = {cid: t.counters() for cid, t in tallies.items()}
        state = _State(kept, tallies, figures, statuses, pages, mark)
        return state, RefreshReport("full", recounted=len(tallies))

    def _incremental(self, kept: Kept, old: _State, started: float) -> tuple[_State, RefreshReport]:
        with self._snapshots.reading(kept.snapshot_id) as cur:
            changed = self._changes.changed(cur, old.mark)
            many = _many(cur, len(changed.actions) + len(changed.supporters))
            if not many:
                statuses: dict[int, int] = dict(cur.execute(CAMPAIGNS).fetchall())
                pages = read_pages(cur)
        if many:  # the full calculation reads campaigns and pages itself
            return self._full(kept, started)
        (new_keys, new_actions), (old_keys, old_actions) = self._touched(changed, kept, old)
        recount = _moved(old, statuses, pages)

        def by_delta(campaign_id: int) -> bool:
            """Whether the campaign's figures change by delta now (else recounted or later)."""
            return (
                campaign_id not in recount
                and campaign_id in statuses
                and old.statuses.get(campaign_id) == LIVE
            )

        keys = new_keys | old_keys
        affected = {k[0] for k in keys} | {c for c, _, _ in (*old_actions, *new_actions)}
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
        recounted = {}
        if recount:
            with self._snapshots.reading(kept.snapshot_id) as cur:
                recounted = campaign_figures(cur, sorted(recount))

        delta = _Delta(dict(old.tallies))
        _credit(delta, keys, before, after)
        for counted_actions, sign in ((old_actions, -1), (new_actions, 1)):
            for (campaign_id, action_type, counts), n in counted_actions.items():
                if counts and by_delta(campaign_id):
                    delta.tally(campaign_id).count_actions(action_type, sign * n)
        tallies = delta.tallies
        for campaign_id in recount:
            tallies[campaign_id] = recounted.get(campaign_id) or CampaignTally()
        for campaign_id in tallies.keys() - statuses.keys():  # deleted campaigns
            del tallies[campaign_id]
        for campaign_id in statuses.keys() - tallies.keys():
            tallies[campaign_id] = CampaignTally()
        figures = _published(old, tallies, pages, delta.touched, recount)
        state = _State(kept, tallies, figures, statuses, pages, changed.mark)
        report = RefreshReport(
            "incremental",
            len(changed.actions),
            len(changed.supporters),
            len(keys),
            len(recount),
            key_parts=len(key_parts),
        )
        return state, report

    def _touched(self, changed: Changed, kept: Kept, old: _State) -> tuple[Touched, Touched]:
        """The keys and action kinds the changed rows touch, in the new snapshot and the old."""
        count = parts(len(changed.actions) + len(changed.supporters))
        changed_parts = list(
            zip(split(changed.actions, count), split(changed.supporters, count), strict=True)
        )
        new, old_touched = self._snapshots.ask(
            changed_parts, _touched, kept.snapshot_id, old.kept.snapshot_id
        )
        return _together(new), _together(old_touched)

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


def _moved(old: _State, statuses: dict[int, int], pages: dict[int, Page]) -> set[int]:
    """Campaigns to recount whole: new, just live again, or whose pages moved."""
    recount = {c for c, s in statuses.items() if s == LIVE and old.statuses.get(c) != LIVE}
    for page_id in old.pages.keys() | pages.keys():
        page_was, page_now = old.pages.get(page_id), pages.get(page_id)
        if page_was is None or page_now is None or page_was[:2] != page_now[:2]:
            recount.update(p[0] for p in (page_was, page_now) if p is not None)
    return recount


def _credit(
    delta: _Delta, keys: set[Key], before: dict[Key, Credit], after: dict[Key, Credit]
) -> None:
    """Move each key's supporter from where the old snapshot credits it to where the new does."""
    for key in keys:
        was, now = before.get(key), after.get(key)
        if was != now:
            if was is not None:
                delta.tally(key[0]).credit(was, -1)
            if now is not None:
                delta.tally(key[0]).credit(now, 1)


def _published(
    old: _State,
    tallies: dict[int, CampaignTally],
    pages: dict[int, Page],
    touched: set[int],
    recount: set[int],
) -> dict[int, CampaignCounters]:
    """The figures to publish: the held ones, with those of changed campaigns rebuilt and
    the extra supporters of the pages (read whole) added."""
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
    return figures


def _many(cur: Cursor, changed: int) -> bool:
    """Whether so many rows changed that a full calculation costs less than a refresh."""
    if changed <= MANY_CHANGES:
        return False
    estimate = next(cur.execute(ACTIONS_ESTIMATE))[0]
    return bool(changed > MANY_CHANGES_SHARE * estimate)


def _touched(cur: Cursor, changed: tuple[list[int], list[int]]) -> Touched:
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


def _together(parts_touched: list[Touched]) -> Touched:
    """The parts' touched keys and changed actions, as one."""
    keys: set[Key] = set()
    kinds: Counter[ActionKind] = Counter()
    for part_keys, part_kinds in parts_touched:
        keys |= part_keys
        kinds.update(part_kinds)
    return keys, kinds
