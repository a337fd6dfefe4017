"""Which actions and supporters changed between the held snapshot and a new one.

A refresh needs only the ids of the rows that changed; the exact comparison of
what they count in both snapshots is the refresh's own (refresh.py). Finding
the ids is this seam: a ``ChangeSource`` answers "which ids changed between
snapshot L and N, and what mark does N leave for the next refresh to start
from". A row reported that did not change costs a little work and changes no
figure (the same question asked of the same two snapshots gets the same
answer), so a source may report too much, never too little.

Two sources stand behind it: the logical change feed (feed.py), and
``UpdatedAt`` here, the fallback that needs nothing from the database's
configuration. docs/sync.md compares them.

``UpdatedAt`` finds a changed row by its ``xmin``, the transaction that wrote
its current version: a row written after L has one L does not see. Without an
index on ``updated_at`` (Proca's schema has none) that is one scan of each table
per refresh, and exact. With the index, the scan is narrowed to the rows whose
``updated_at`` is at or after the newest one L held, less ``--change-overlap``
(a transaction may commit a while after it stamped its rows), so it costs what
changed, and the rows L already saw in that window are not reported again: a
bulk load is taken in once, not at every refresh while it stays in the window.
A refresh between two snapshots that see the same transactions reads nothing.
Deletes leave no row behind: the full calculation of the safety net
(``--full-sync-interval``) sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from proca_stats.server.sync.calculation import Cursor
from proca_stats.server.sync.position import XID_SPAN, Position

# Where a snapshot's changes end, for the next refresh to start from: a source's own
# value, opaque to the refresh.
Mark = object

# Tables with an index whose first column is updated_at (the recommended indexes).
UPDATED_AT_INDEXED = """
    SELECT c.relname FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid IN ('actions'::regclass, 'supporters'::regclass)
      AND a.attname = 'updated_at' AND i.indisvalid AND i.indpred IS NULL
"""
NEWEST = "SELECT max(updated_at) FROM {table}"
# Rows whose transaction is at or after the held snapshot's xmin: every row written since
# (and a few written by transactions that ended just before it, which change nothing).
# ``xmin`` is 32 bits wide and wraps: its distance from that xmin, modulo 2^32, is below
# the span of transactions up to the new snapshot's xmax.
CHANGED = f"""
    SELECT id FROM {{table}}
    WHERE {{window}} mod(xmin::text::bigint - %(low)s + {XID_SPAN}, {XID_SPAN}) < %(span)s
"""
WINDOW = "updated_at >= %(since)s AND"
TABLES = ("actions", "supporters")


class ChangesLost(Exception):
    """The source can no longer list the changes since the held snapshot (its slot was
    dropped or invalidated, another server took it): the refresh must be a full
    calculation, in a snapshot taken after ``prepare()`` has set the source up again."""


@dataclass(frozen=True)
class Changed:
    """The ids of the rows changed since a mark, and the new snapshot's mark.

    ``pages``: whether action pages or campaigns may have changed too (when not, the
    refresh does not read them again). ``complete`` False: the changes cannot be listed
    (too many, a table truncated, …); the refresh is then a full calculation in the new
    snapshot, which ``mark`` describes all the same.
    """

    actions: list[int]
    supporters: list[int]
    mark: Mark
    pages: bool = True
    complete: bool = True


class ChangeSource(Protocol):
    """Finds the rows changed between two snapshots.

    ``prepare()`` runs before each snapshot is taken (a feed takes its slot up there);
    True says the held snapshot's mark cannot be continued from. ``mark(cur, at)`` is the
    mark of the snapshot ``cur`` reads in, taken after a full calculation; ``changed(cur,
    since, at)`` the rows changed between the snapshot whose mark is ``since`` and the one
    ``cur`` reads in, with the latter's mark. ``settled(mark)``: the snapshot of that mark
    is now held and persisted, so what came before it is no longer needed. ``saved`` and
    ``resume`` turn a mark into JSON and back for the state file; ``resume`` answers None
    when the source cannot continue from the saved mark. ``close()`` lets go of what the
    source holds (a feed's slot). ``cancel()``, from another thread, ends what the source
    waits for on connections of its own (the server is stopping); it is used no more.
    """

    @property
    def kind(self) -> str: ...

    def prepare(self) -> bool: ...

    def mark(self, cur: Cursor, at: Position) -> Mark: ...

    def changed(self, cur: Cursor, since: Mark, at: Position) -> Changed: ...

    def settled(self, mark: Mark) -> None: ...

    def saved(self, mark: Mark) -> dict[str, Any]: ...

    def resume(self, saved: dict[str, Any]) -> Mark | None: ...

    def close(self) -> None: ...

    def cancel(self) -> None: ...


@dataclass(frozen=True)
class UpdatedAtMark:
    """The newest ``updated_at`` of each table in a snapshot (None: the table was empty or
    has no index on it) and the snapshot's position."""

    actions: datetime | None
    supporters: datetime | None
    position: Position

    def newest(self, table: str) -> datetime | None:
        return self.actions if table == "actions" else self.supporters


class UpdatedAt:
    """Changed rows by the transaction that wrote them, narrowed by ``updated_at`` where an
    index allows (see the module's docstring)."""

    kind = "updated-at"

    def __init__(self, overlap: float) -> None:
        """``overlap`` in seconds."""
        self._overlap = timedelta(seconds=overlap)

    def prepare(self) -> bool:
        return False

    def mark(self, cur: Cursor, at: Position) -> UpdatedAtMark:
        indexed = _indexed(cur)
        actions, supporters = (_newest(cur, t) if t in indexed else None for t in TABLES)
        return UpdatedAtMark(actions, supporters, at)

    def changed(self, cur: Cursor, since: Mark, at: Position) -> Changed:
        assert isinstance(since, UpdatedAtMark)
        if at.sees_the_same_as(since.position):
            return Changed([], [], UpdatedAtMark(since.actions, since.supporters, at), False)
        span = at.xmax - since.position.xmin
        if span >= XID_SPAN // 2:  # so far apart that 32-bit ids are ambiguous
            return Changed([], [], self.mark(cur, at), complete=False)
        indexed = _indexed(cur)
        found: dict[str, list[int]] = {}
        newest: dict[str, datetime | None] = {}
        for table in TABLES:
            params: dict[str, object] = {"low": since.position.xmin % XID_SPAN, "span": span}
            window = ""
            if table in indexed:
                newest[table] = _newest(cur, table)
                stamp = since.newest(table)
                if stamp is not None:
                    window, params["since"] = WINDOW, stamp - self._overlap
            else:
                newest[table] = None
            query = CHANGED.format(table=table, window=window)
            found[table] = [row[0] for row in cur.execute(query.encode(), params)]
        mark = UpdatedAtMark(newest["actions"], newest["supporters"], at)
        return Changed(found["actions"], found["supporters"], mark)

    def settled(self, mark: Mark) -> None:
        """Nothing to let go of: the tables are the record."""

    def saved(self, mark: Mark) -> dict[str, Any]:
        assert isinstance(mark, UpdatedAtMark)
        return {
            "kind": self.kind,
            "actions": mark.actions and mark.actions.isoformat(),
            "supporters": mark.supporters and mark.supporters.isoformat(),
            "position": mark.position.to_json(),
        }

    def resume(self, saved: dict[str, Any]) -> UpdatedAtMark | None:
        if saved.get("kind") != self.kind:
            return None
        actions, supporters = (
            None if saved[t] is None else datetime.fromisoformat(saved[t]) for t in TABLES
        )
        return UpdatedAtMark(actions, supporters, Position.from_json(saved["position"]))

    def close(self) -> None:
        """Nothing held."""

    def cancel(self) -> None:
        """Nothing of its own: it reads on the refresh's connections, which a stop cancels."""


def _indexed(cur: Cursor) -> set[str]:
    """The tables whose ``updated_at`` is indexed (an index can be created at any time)."""
    return {row[0] for row in cur.execute(UPDATED_AT_INDEXED)}


def _newest(cur: Cursor, table: str) -> datetime | None:
    newest: datetime | None = next(cur.execute(NEWEST.format(table=table).encode()))[0]
    return newest
