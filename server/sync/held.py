"""The held snapshot as other threads ask it: which actions it holds, which commits it saw.

After a swap, the snapshot the figures come from stays open (the sync keeps it
for its next refresh), so it can still be asked. Two questions come from
outside the sync thread:

- the late check (state/late.py): which of these action ids it holds. Asked on
  a pool connection kept for it (``Snapshots.aside``), since the reading
  connection is the refreshing thread's. It fails once the snapshot is released,
  which happens only after a later swap, whose handover then decides instead.
- the fan-out listener: whether a message's publishing transaction had
  committed before the snapshot was taken. A replica publishes an Increment
  after its caller stored the action, so a transaction the snapshot saw commit
  names actions it holds. Answered without a query: ``pg_current_snapshot()``
  read once in the snapshot gives its xmin, xmax and the transactions running
  when it was taken, and ``Visibility.sees`` is ``pg_visible_in_snapshot``'s own
  rule. Transaction ids are only comparable within one PostgreSQL cluster, and
  a hot standby's snapshot lists no running transactions, so the fan-out uses
  this only when the sync reads the database it publishes on.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from proca_stats.server.sync.calculation import Cursor
from proca_stats.server.sync.snapshots import Snapshots

SEEN = "SELECT id FROM actions WHERE id = ANY(%b)"
CURRENT = "SELECT pg_current_snapshot()::text"

# The connections the late check keeps from the sync's pool, beyond the refresher's.
ASIDE_CONNECTIONS = 1


def seen_in(cur: Cursor, action_ids: Collection[int]) -> set[int]:
    """Which of these action ids the snapshot ``cur`` reads in holds."""
    return {row[0] for row in cur.execute(SEEN, (list(action_ids),))}


@dataclass(frozen=True)
class Visibility:
    """Which transactions a snapshot sees, from its ``pg_snapshot`` text ``xmin:xmax:xip,...``."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> Visibility:
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def sees(self, xid: int) -> bool:
        """Whether the committed transaction ``xid`` is visible: earlier than every one running
        when the snapshot was taken, or started before it and not running then."""
        if xid < self.xmin:
            return True
        return xid < self.xmax and xid not in self.running


class HeldSnapshot:
    """One kept snapshot, asked from threads other than the sync's (see above)."""

    def __init__(self, snapshots: Snapshots, snapshot_id: str) -> None:
        """Reads the snapshot's visibility on the reading connection: call it on the sync thread."""
        self._snapshots = snapshots
        self._id = snapshot_id
        with snapshots.reading(snapshot_id) as cur:
            self._visibility = Visibility.parse(next(cur.execute(CURRENT))[0])

    def seen(self, action_ids: Collection[int]) -> set[int]:
        with self._snapshots.aside(self._id) as cur:
            return seen_in(cur, action_ids)

    def sees_transaction(self, xid: int) -> bool:
        return self._visibility.sees(xid)
