"""Swapping a calculation's snapshot into the store without losing or doubling Increments.

The race: a calculation reads the database in one snapshot, which takes time.
Increments keep arriving meanwhile and change the figures in memory. Swapping
the snapshot in would drop those whose actions the snapshot did not see, and
re-applying all of them would count twice those it did see.

What decides: an Increment reports an action that its caller has already
stored, so an Increment counted before the calculation's snapshot was taken
(numbered below ``Snapshot.increments_before``) names an action the snapshot
sees if the database still has it. For the others, the snapshot is asked: the
action ids are looked up in the calculation's own transaction, still open
(``SELECT id FROM actions WHERE id = ANY(…)``). Then:

- seen by the snapshot: already in its figures; the id is kept one more
  generation so that a late retry does not count it again;
- not seen, counted after the snapshot was taken: re-applied on top of the
  snapshot's figures, and remembered until a later snapshot decides;
- not seen, counted before the snapshot was taken: its action is not in the
  database (never stored, or deleted): forgotten, as the database is the truth.

Increments that arrive between the look-up and the swap are caught by the
store: the swap only succeeds when no Increment with an action id arrived
since the figures were prepared (``StatsStore.replace_if_current``); otherwise
the newcomers are looked up in the same transaction and applied, and the swap
is tried again. Each round only handles the newcomers of the round before, so
it ends as soon as one round passes without an arrival.

Increments counted after the swap are the late check's (late.py): they are
looked up in the snapshot this swap installs, ``held``.

Increments without an action id cannot be told apart: the snapshot replaces
them, and the next calculation makes the figures exact (Proca's behaviour).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from proca_stats.server.state.counters import NO_COUNTERS, Snapshot, incremented
from proca_stats.server.state.store import Arrival, Held, Replacement, StatsStore

# Which of these action ids the calculation's snapshot sees.
Lookup = Callable[[Collection[int]], set[int]]


def swap_in(
    store: StatsStore, snapshot: Snapshot, seen_by_snapshot: Lookup, held: Held | None = None
) -> int:
    """Put the snapshot's figures in the store, re-applying what it missed.

    Takes ownership of ``snapshot.campaigns``. ``held`` is the same snapshot as
    other threads may ask it after the swap (None: Increments counted after the
    swap are not looked up). Returns how many Increments were re-applied.
    """
    campaigns = snapshot.campaigns
    carried = store.carried()
    seen = seen_by_snapshot([a.action_id for a in carried]) if carried else set()
    confirmed = {a.action_id for a in carried} & seen
    reapplied: list[Arrival] = []
    seq = 0
    while True:
        fresh, upto = store.arrived_since(seq)
        ids = [a.action_id for a in fresh]
        seen_now = seen_by_snapshot(ids) if ids else set()
        for arrival in fresh:
            action_id = arrival.action_id
            inc = arrival.increment
            if action_id in seen_now:
                confirmed.add(action_id)
            elif arrival.seq >= snapshot.increments_before:
                campaigns[inc.campaign_id] = incremented(
                    campaigns.get(inc.campaign_id, NO_COUNTERS), inc
                )
                reapplied.append(arrival)
        remembered = frozenset(confirmed | {a.action_id for a in reapplied})
        replacement = Replacement(
            campaigns, snapshot.taken_at, upto, remembered, reapplied, held, snapshot.pages
        )
        if store.replace_if_current(replacement):
            return len(reapplied)
        seq = upto
