"""Which actions and supporters changed between the held snapshot and a new one.

A refresh needs only the ids of the rows that changed; the exact comparison of
what they count in both snapshots is the refresh's own (refresh.py). Finding
the ids is this seam: a ``ChangeSource`` answers "which ids changed between
snapshot L and N, and what mark does N leave for the next refresh to start
from". A row reported that did not change costs a little work and changes no
figure (the same question asked of the same two snapshots gets the same
answer), so a source may report too much, never too little.

``UpdatedAt`` finds them by ``updated_at``, which Proca sets on every insert and
update of actions and supporters. Deletes leave no trace there: the full
calculation of the safety net (``--full-sync-interval``) sees them. Without an
index on ``updated_at`` (Proca's schema has none) each question is a scan of
both tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from proca_stats.server.sync.calculation import Cursor

# The newest change the snapshot holds (an index on updated_at makes these instant).
LATEST_CHANGES = """
    SELECT (SELECT max(updated_at) FROM actions), (SELECT max(updated_at) FROM supporters)
"""
CHANGED_ACTIONS = "SELECT id, updated_at FROM actions WHERE updated_at >= %s"
CHANGED_SUPPORTERS = "SELECT id, updated_at FROM supporters WHERE updated_at >= %s"

# Where a snapshot's changes end, for the next refresh to start from: a source's own
# value, opaque to the refresh.
Mark = object


@dataclass(frozen=True)
class Changed:
    """The ids of the rows changed since a mark, and the new snapshot's mark."""

    actions: list[int]
    supporters: list[int]
    mark: Mark


class ChangeSource(Protocol):
    """Finds the rows changed between two snapshots.

    ``mark(cur)`` is the mark of the snapshot ``cur`` reads in, taken after a full
    calculation; ``changed(cur, since)`` the rows changed between the snapshot whose
    mark is ``since`` and the one ``cur`` reads in, with the latter's mark.
    """

    def mark(self, cur: Cursor) -> Mark: ...

    def changed(self, cur: Cursor, since: Mark) -> Changed: ...


@dataclass(frozen=True)
class UpdatedAtMark:
    """The newest ``updated_at`` of each table in a snapshot (None: the table was empty)."""

    actions: datetime | None
    supporters: datetime | None


class UpdatedAt:
    """Changed rows are those whose ``updated_at`` is at or after the newest one the held
    snapshot saw, less ``overlap``: a transaction may commit a while after it stamped its
    rows, and a row stamped before the mark but committed after it must still be found."""

    def __init__(self, overlap: float) -> None:
        """``overlap`` in seconds."""
        self._overlap = timedelta(seconds=overlap)

    def mark(self, cur: Cursor) -> UpdatedAtMark:
        actions, supporters = next(cur.execute(LATEST_CHANGES))
        return UpdatedAtMark(actions, supporters)

    def changed(self, cur: Cursor, since: Mark) -> Changed:
        assert isinstance(since, UpdatedAtMark)
        actions, actions_mark = self._since(cur, CHANGED_ACTIONS, since.actions)
        supporters, supporters_mark = self._since(cur, CHANGED_SUPPORTERS, since.supporters)
        return Changed(actions, supporters, UpdatedAtMark(actions_mark, supporters_mark))

    def _since(
        self, cur: Cursor, query: str, mark: datetime | None
    ) -> tuple[list[int], datetime | None]:
        """Ids of rows changed at or after ``mark`` less the overlap, and the new mark."""
        # Without a mark the table was empty: everything in it is new.
        since = datetime.min if mark is None else mark - self._overlap
        ids: list[int] = []
        newest = mark
        for row_id, updated_at in cur.execute(query, (since,)):
            ids.append(row_id)
            if newest is None or updated_at > newest:
                newest = updated_at
        return ids, newest
