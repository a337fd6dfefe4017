"""The full calculation of docs/figures.md: every campaign's figures from Proca's tables.

PostgreSQL does all the counting; Python only receives rows already grouped by
campaign and key, so a calculation holds the GIL for a short time however many
actions the database has. All queries run in one read-only repeatable-read
transaction, so the figures of a campaign always agree with each other.

Why it is faster than Proca's queries, with the same figures: Proca sorts the
whole actions⋈supporters join twice (``DISTINCT ON (campaign_id, fingerprint)``
once for orgs and once more for areas). Here one sort serves both rules:

- the first row of each (campaign, fingerprint) in (inserted_at, id) order is
  the supporter's first action: it gives the org (docs/figures.md);
- the same row gives the area when its supporter has one. When it has none,
  ``count(s.area)`` over the same window (computed on the already sorted rows,
  no second sort) says whether any of the fingerprint's pairs has an area: if
  none does, the supporter has no area; if one does (a fingerprint whose
  supporter records differ in area — rare), the area of its first pair with an
  area is looked up for just those fingerprints (docs/figures.md).

The sort runs in memory (``work_mem``), in parallel workers, and without JIT
compilation, set for this transaction only (``SET LOCAL``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Self

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.rows import TupleRow

from proca_stats.server.state.counters import Snapshot
from proca_stats.server.sync.position import Position
from proca_stats.server.sync.tally import CampaignTally, Credit

# For this transaction only: sorts and hashes in memory, no JIT compilation
# (it costs more than it saves on these queries), parallel workers welcome,
# and the leader left to merge their sorted rows and run the window rather
# than sort a share of its own (on few cores it is the bottleneck).
SETTINGS = (
    "SET LOCAL work_mem = '256MB'",
    "SET LOCAL jit = off",
    "SET LOCAL parallel_tuple_cost = 0.00001",
    "SET LOCAL parallel_leader_participation = off",
)

# Pairs (action, supporter) that make deduplicated supporters (docs/figures.md).
# `a.testing` deliberately plays no part here.
COUNTED = """s.processing_status = 3
      AND a.processing_status IN (3, 4)
      AND s.dupe_rank = 0
      AND s.fingerprint IS NOT NULL"""

ALL_PAIRS = "FROM actions a JOIN supporters s ON s.id = a.supporter_id"

# The pairs of chosen (campaign, fingerprint) keys, found through the
# supporters' fingerprint index (and, where it exists, an index on
# actions.supporter_id).
KEYED_PAIRS = """FROM unnest(%(campaigns)b::bigint[], %(fingerprints)b::bytea[])
         AS k(campaign_id, fingerprint)
    JOIN supporters s ON s.fingerprint = k.fingerprint
    JOIN actions a ON a.supporter_id = s.id AND a.campaign_id = k.campaign_id"""


def firsts(pairs: str, where: str = "") -> str:
    """One row per (campaign, fingerprint): its first action's org and supporter's area.

    ``with_area`` counts the fingerprint's pairs whose supporter has an area;
    the window shares the DISTINCT ON's sort, so it costs no second sort. The
    pages (for the org) are joined before the sort, as Proca's query does:
    in the parallel workers, which leaves less to the one process that merges
    their sorted rows.
    """
    return f"""
    SELECT DISTINCT ON (a.campaign_id, s.fingerprint)
           a.campaign_id, s.fingerprint, p.org_id, s.area,
           count(s.area) OVER w AS with_area
    {pairs}
    JOIN action_pages p ON p.id = a.action_page_id
    WHERE {COUNTED} {where}
    WINDOW w AS (PARTITION BY a.campaign_id, s.fingerprint ORDER BY a.inserted_at, a.id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
    ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
    """


def supporters_query(where: str = "") -> str:
    """Deduplicated supporters per (campaign, org, area).

    A fingerprint whose first pair has no area while a later one has is
    returned on a row of its own, with its fingerprint, for the area to be
    looked up (``first_areas``).
    """
    return f"""
    SELECT campaign_id, org_id, area,
           CASE WHEN area IS NULL AND with_area > 0 THEN fingerprint END,
           count(*)
    FROM ({firsts(ALL_PAIRS, where)}) first_pairs
    GROUP BY 1, 2, 3, 4
    """


SUPPORTERS = supporters_query()

# The chosen keys' first org and area; same rule as SUPPORTERS, one row per key.
KEY_FIRSTS = f"""
    SELECT campaign_id, fingerprint, org_id, area, with_area
    FROM ({firsts(KEYED_PAIRS)}) first_pairs
"""

# The area of each chosen key's first pair whose supporter has an area (docs/figures.md).
FIRST_AREAS = f"""
    SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, s.fingerprint, s.area
    {KEYED_PAIRS}
    WHERE {COUNTED} AND s.area IS NOT NULL
    ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
"""

# Accepted actions, with or without a supporter: the non-testing ones are the action counts,
# and all of them the campaign's ``paired`` count (tally.py says what it is for).
ACTIONS_BY_TYPE = """
    SELECT campaign_id, action_type, testing, count(*)
    FROM actions
    WHERE processing_status IN (3, 4) {where}
    GROUP BY campaign_id, action_type, testing
"""

# Pages and campaigns are small tables: read whole, every time.
PAGES = "SELECT id, campaign_id, org_id, extra_supporters FROM action_pages"
CAMPAIGNS = "SELECT id, status FROM campaigns"

Key = tuple[int, bytes]  # (campaign id, fingerprint)
Cursor = psycopg.Cursor[TupleRow]
Page = tuple[int, int | None, int]  # (campaign id, org id, extra supporters)


class CountingCursor(Cursor):
    """A cursor that adds up the rows its queries returned, for the sync's log line."""

    rows_read = 0

    def execute(self, *args: Any, **kwargs: Any) -> Self:
        super().execute(*args, **kwargs)
        self.rows_read += max(self.rowcount, 0)  # -1 for statements that return no rows
        return self


# The snapshot is taken as this statement starts, so the WAL position it reads comes after it
# (position.py says why that matters).
KEEP = """
    SELECT now(), pg_export_snapshot(), pg_current_snapshot()::text, pg_is_in_recovery(),
           CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                ELSE pg_current_wal_insert_lsn() END
"""


def keep_snapshot(conn: psycopg.Connection[TupleRow]) -> tuple[datetime, str, Position]:
    """Open a read-only repeatable-read transaction that only keeps its snapshot.

    It reads no table, so it holds no lock; other transactions read in its
    snapshot by its id (``read_in``) while it stays open. Returns when the
    snapshot was taken, its id, and where it stands among transactions and in the WAL.
    """
    conn.autocommit = False
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    row = conn.execute(KEEP).fetchone()
    assert row is not None
    taken_at, snapshot_id, transactions, standby, lsn = row
    return taken_at, snapshot_id, Position.parse(transactions, lsn, standby)


def limit_time(cur: psycopg.Cursor[TupleRow], timeout_ms: int) -> None:
    """Cancel any query of this transaction that runs longer than ``timeout_ms`` (0: never),
    with psycopg.errors.QueryCanceled, so a slow database cannot stall the sync forever."""
    cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(timeout_ms))


@contextmanager
def read_in(
    conn: psycopg.Connection[TupleRow], snapshot_id: str, timeout_ms: int = 0
) -> Iterator[CountingCursor]:
    """A cursor in a short transaction reading the kept snapshot ``snapshot_id``.

    The transaction ends (and releases its locks) when the block does. The
    planner settings of the full calculation are left to it (``campaign_figures``):
    small look-ups are better served without parallel workers.
    """
    conn.autocommit = False
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    try:
        with CountingCursor(conn) as cur:
            cur.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot_id)))
            limit_time(cur, timeout_ms)
            yield cur
    finally:
        if not conn.closed:
            conn.rollback()  # read only: nothing to commit


def begin(conn: psycopg.Connection[TupleRow]) -> datetime:
    """Start the calculation's read-only repeatable-read transaction; when its snapshot was taken.

    The connection is left inside the transaction.
    """
    conn.autocommit = False
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    with conn.cursor() as cur:
        # The snapshot is taken by the transaction's first statement: this one.
        taken_at: datetime = next(cur.execute("SELECT now()"))[0]
    return taken_at


def first_areas(cur: psycopg.Cursor[TupleRow], keys: Sequence[Key]) -> dict[Key, str]:
    """The area of each key's first pair with an area (keys without one are left out)."""
    if not keys:
        return {}
    params = {"campaigns": [c for c, _ in keys], "fingerprints": [f for _, f in keys]}
    return {(c, bytes(f)): area for c, f, area in cur.execute(FIRST_AREAS, params)}


def key_credits(cur: psycopg.Cursor[TupleRow], keys: Iterable[Key]) -> dict[Key, Credit]:
    """Where each key's supporter is credited in this snapshot; keys not counted are left out."""
    keys = list(keys)
    if not keys:
        return {}
    params = {"campaigns": [c for c, _ in keys], "fingerprints": [f for _, f in keys]}
    credits: dict[Key, Credit] = {}
    to_look_up: list[Key] = []
    for campaign_id, fingerprint, org_id, area, with_area in cur.execute(KEY_FIRSTS, params):
        key = (campaign_id, bytes(fingerprint))
        credits[key] = (org_id, area)
        if area is None and with_area:
            to_look_up.append(key)
    for key, area in first_areas(cur, to_look_up).items():
        credits[key] = (credits[key][0], area)
    return credits


def campaign_figures(
    cur: psycopg.Cursor[TupleRow], campaign_ids: Sequence[int] | None = None
) -> dict[int, CampaignTally]:
    """Deduplicated supporters and action counts of every campaign (or of the given ones).

    Campaigns without any counted row are left out; extra supporters are not included.
    """
    for setting in SETTINGS:  # for the rest of the transaction
        cur.execute(setting.encode())
    where, params = "", {}
    if campaign_ids is not None:
        where, params = "AND a.campaign_id = ANY(%(ids)b)", {"ids": list(campaign_ids)}
    tallies: defaultdict[int, CampaignTally] = defaultdict(CampaignTally)
    to_look_up: list[tuple[Key, int | None]] = []
    for campaign_id, org_id, area, fingerprint, count in cur.execute(
        supporters_query(where).encode(), params
    ):
        if fingerprint is not None:
            to_look_up.append(((campaign_id, bytes(fingerprint)), org_id))
        else:
            tallies[campaign_id].credit((org_id, area), count)
    areas = first_areas(cur, [key for key, _ in to_look_up])
    for key, org_id in to_look_up:
        tallies[key[0]].credit((org_id, areas.get(key)), 1)
    action_where = where.replace("a.campaign_id", "campaign_id")
    for campaign_id, action_type, testing, count in cur.execute(
        ACTIONS_BY_TYPE.format(where=action_where).encode(), params
    ):
        tallies[campaign_id].paired += count
        if not testing:
            tallies[campaign_id].count_actions(action_type, count)
    return dict(tallies)


def read_pages(cur: psycopg.Cursor[TupleRow]) -> dict[int, Page]:
    return {page_id: (c, org, extra) for page_id, c, org, extra in cur.execute(PAGES)}


def extra_supporters(pages: Iterable[Page]) -> dict[int, dict[int | None, int]]:
    """Per campaign and org, the sum of extra supporters of pages whose extra is not 0."""
    extra: defaultdict[int, dict[int | None, int]] = defaultdict(dict)
    for campaign_id, org_id, count in pages:
        if count != 0:
            extra[campaign_id][org_id] = extra[campaign_id].get(org_id, 0) + count
    return dict(extra)


def full_tallies(
    cur: psycopg.Cursor[TupleRow],
) -> tuple[dict[int, CampaignTally], dict[int, int], dict[int, Page]]:
    """Every campaign's tally (a campaign with no data has zeros), their statuses, the pages."""
    statuses: dict[int, int] = dict(cur.execute(CAMPAIGNS).fetchall())
    pages = read_pages(cur)
    extra = extra_supporters(pages.values())
    counted = campaign_figures(cur)
    tallies = {}
    for campaign_id in statuses.keys() | counted.keys() | extra.keys():
        tally = counted.get(campaign_id) or CampaignTally()
        tally.extra = extra.get(campaign_id, {})
        tallies[campaign_id] = tally
    return tallies, statuses, pages


def calculate(conn: psycopg.Connection[TupleRow], timeout_ms: int = 0) -> Snapshot:
    """Run the full calculation on an idle connection and return its snapshot.

    ``timeout_ms`` (0: none) cancels a query that runs longer (see ``limit_time``).
    """
    taken_at = begin(conn)
    try:
        with conn.cursor() as cur:
            limit_time(cur, timeout_ms)
            tallies, _, _ = full_tallies(cur)
    finally:
        conn.rollback()  # read only: nothing to commit
    return Snapshot({cid: t.counters() for cid, t in tallies.items()}, taken_at)
