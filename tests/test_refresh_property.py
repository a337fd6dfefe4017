"""Incremental refresh = full calculation, after every random change to a real database.

Changes are made the way Proca makes them: every insert and update of an
action or a supporter sets its ``updated_at`` (here from a test clock that only
moves forward). The refresh finds them two ways, each tested on its own:

- the logical change feed (on a PostgreSQL with wal_level logical): deletes
  included, every refresh is incremental;
- the updated-at fallback, with and without the recommended indexes: deletes
  leave no row for it to find; the server's safety net is a full calculation at
  ``--full-sync-interval``, so after a delete this test runs that full
  calculation, as the server would, and then goes on incrementally from it.

The full calculation itself is checked against Proca 3.4's queries (two
``DISTINCT ON`` passes) on the same random data, so the one-sort calculation
is held to the figures Proca gives.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca_stats.server.database import RECOMMENDED_INDEXES
from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.refresh import Refresher
from tests.support.database import Refreshing
from tests.support.logical_postgres import feed_refresher

BASE = datetime(2026, 3, 1, 9, 0, 0)
FINGERPRINTS = [b"ann", b"ben", b"cat", b"dan"]
AREAS = ["DE", "FR", None]
ORGS = 3
# (campaign index, org index or None, extra supporters)
PAGES = [(0, 0, 0), (0, 1, 5), (1, 1, 0), (1, None, 2), (2, 2, -1)]
CAMPAIGN_STATUSES = [0, 0, 1]  # two live campaigns, one closed

# Proca 3.4's queries for the same figures (docs/figures.md), as the reference.
PROCA_ORGS = """
    SELECT campaign_id, org_id, count(*) FROM (
        SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, p.org_id
        FROM actions a JOIN supporters s ON s.id = a.supporter_id
        JOIN action_pages p ON p.id = a.action_page_id
        WHERE s.processing_status = 3 AND a.processing_status IN (3, 4)
          AND s.dupe_rank = 0 AND s.fingerprint IS NOT NULL
        ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id) f
    GROUP BY campaign_id, org_id
"""
PROCA_AREAS = """
    SELECT campaign_id, area, count(*) FROM (
        SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, s.area
        FROM actions a JOIN supporters s ON s.id = a.supporter_id
        WHERE s.processing_status = 3 AND a.processing_status IN (3, 4)
          AND s.dupe_rank = 0 AND s.fingerprint IS NOT NULL AND s.area IS NOT NULL
        ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id) f
    GROUP BY campaign_id, area
"""
PROCA_EXTRA = """
    SELECT campaign_id, org_id, sum(extra_supporters) FROM action_pages
    WHERE extra_supporters <> 0 GROUP BY campaign_id, org_id
"""
PROCA_ACTIONS = """
    SELECT campaign_id, action_type, count(*) FROM actions
    WHERE processing_status IN (3, 4) AND NOT testing GROUP BY campaign_id, action_type
"""


def proca_figures(conn: psycopg.Connection) -> dict[int, CampaignCounters]:
    """Every campaign's figures as Proca 3.4's queries give them."""
    totals: dict[int, int] = {}
    orgs: dict[int, dict[int, int]] = {}
    areas: dict[int, dict[str, int]] = {}
    actions: dict[int, dict[str, int]] = {}
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        campaigns = [c for (c,) in conn.execute("SELECT id FROM campaigns")]
        for query in (PROCA_ORGS, PROCA_EXTRA):
            for campaign_id, org_id, count in conn.execute(query):
                totals[campaign_id] = totals.get(campaign_id, 0) + int(count)
                if org_id is not None:
                    by_org = orgs.setdefault(campaign_id, {})
                    by_org[org_id] = by_org.get(org_id, 0) + int(count)
        for campaign_id, area, count in conn.execute(PROCA_AREAS):
            areas.setdefault(campaign_id, {})[area] = count
        for campaign_id, action_type, count in conn.execute(PROCA_ACTIONS):
            actions.setdefault(campaign_id, {})[action_type] = count
    return {
        c: CampaignCounters(totals.get(c, 0), actions.get(c, {}), areas.get(c, {}), orgs.get(c, {}))
        for c in campaigns
    }


@dataclass
class Proca:
    """Writes to the test database as Proca does, setting updated_at from a forward clock."""

    conn: psycopg.Connection
    campaigns: list[int] = field(default_factory=list)
    orgs: list[int] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    clock: int = 0

    def now(self) -> datetime:
        self.clock += 1
        return BASE + timedelta(days=1, seconds=self.clock)

    def one(self, query: str, *params: object) -> int:
        row = self.conn.execute(query.encode(), params).fetchone()
        assert row is not None
        return int(row[0])

    def ids(self, table: str) -> list[int]:
        return [i for (i,) in self.conn.execute(f"SELECT id FROM {table} ORDER BY id".encode())]

    def setup(self) -> None:
        self.orgs = [
            self.one("INSERT INTO orgs (name, title) VALUES ('o', 'o') RETURNING id")
            for _ in range(ORGS)
        ]
        self.campaigns = [
            self.one(
                "INSERT INTO campaigns (name, title, status) VALUES ('c', 'c', %s) RETURNING id",
                status,
            )
            for status in CAMPAIGN_STATUSES
        ]
        self.pages = [
            self.one(
                "INSERT INTO action_pages (name, campaign_id, org_id, extra_supporters)"
                " VALUES ('p', %s, %s, %s) RETURNING id",
                self.campaigns[c],
                None if o is None else self.orgs[o],
                extra,
            )
            for c, o, extra in PAGES
        ]

    def page_campaign(self, page: int) -> int:
        return self.campaigns[PAGES[page][0]]

    def supporter(
        self, page: int, fingerprint: int | None, area: int, status: int, rank: int | None
    ) -> int:
        at = self.now()
        return self.one(
            "INSERT INTO supporters (campaign_id, action_page_id, fingerprint, area,"
            " processing_status, dupe_rank, inserted_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            self.page_campaign(page),
            self.pages[page],
            None if fingerprint is None else FINGERPRINTS[fingerprint],
            AREAS[area],
            status,
            rank,
            at,
            at,
        )

    def action(
        self, page: int, supporter: int | None, status: int, testing: bool, second: int, kind: int
    ) -> int:
        return self.one(
            "INSERT INTO actions (campaign_id, action_page_id, supporter_id, action_type,"
            " processing_status, testing, inserted_at, updated_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
            self.page_campaign(page),
            self.pages[page],
            supporter,
            ["signature", "share"][kind],
            status,
            testing,
            BASE + timedelta(seconds=second),  # few distinct times: ties on purpose
            self.now(),
        )

    def update(self, table: str, row_id: int, column: str, value: object) -> None:
        self.conn.execute(
            f"UPDATE {table} SET {column} = %s, updated_at = %s WHERE id = %s".encode(),
            (value, self.now(), row_id),
        )


def pick(ids: list[int], index: int) -> int | None:
    return ids[index % len(ids)] if ids else None


statuses = st.integers(0, 4)
seconds = st.integers(0, 4)
pages = st.integers(0, len(PAGES) - 1)
fingerprints = st.one_of(st.none(), st.integers(0, len(FINGERPRINTS) - 1))
ranks = st.one_of(st.none(), st.integers(0, 1))
areas = st.integers(0, len(AREAS) - 1)
any_index = st.integers(0, 1000)

# Rows to change: a person, or an action (of a supporter, or anonymous).
creations = st.one_of(
    st.tuples(st.just("person"), pages, fingerprints, areas, statuses, ranks, statuses, seconds),
    st.tuples(st.just("action"), pages, any_index, st.booleans(), statuses, st.booleans(), seconds),
)
changes = st.one_of(
    creations,
    st.tuples(st.just("action status"), any_index, statuses),
    st.tuples(st.just("action testing"), any_index, st.booleans()),
    st.tuples(st.just("action time"), any_index, seconds),
    st.tuples(st.just("action supporter"), any_index, any_index),
    st.tuples(st.just("supporter status"), any_index, statuses),
    st.tuples(st.just("dupe rank"), any_index, ranks),
    st.tuples(st.just("area"), any_index, areas),
    st.tuples(st.just("fingerprint"), any_index, fingerprints),
    st.tuples(st.just("page extra"), pages, st.integers(-3, 3)),
    st.tuples(st.just("page org"), pages, st.one_of(st.none(), st.integers(0, ORGS - 1))),
    st.tuples(st.just("campaign status"), st.integers(0, 2), st.integers(0, 2)),
    st.tuples(st.just("delete action"), any_index),
    st.tuples(st.just("delete supporter"), any_index),
)


def apply(proca: Proca, change: tuple[object, ...]) -> bool:
    """Make one change; True when it deleted rows (only a full calculation can see that)."""
    kind, *args = change
    actions, supporters = proca.ids("actions"), proca.ids("supporters")
    match kind, args:
        case "person", [int(page), fp, int(area), int(s_status), rank, int(a_status), int(sec)]:
            supporter = proca.supporter(page, fp, area, s_status, rank)  # type: ignore[arg-type]
            proca.action(page, supporter, a_status, False, sec, 0)
        case "action", [int(page), int(who), bool(anonymous), int(status), bool(test), int(sec)]:
            supporter = None if anonymous else pick(supporters, who)
            proca.action(page, supporter, status, test, sec, sec % 2)
        case "action status", [int(which), int(status)]:
            if (action := pick(actions, which)) is not None:
                proca.update("actions", action, "processing_status", status)
        case "action testing", [int(which), bool(testing)]:
            if (action := pick(actions, which)) is not None:
                proca.update("actions", action, "testing", testing)
        case "action time", [int(which), int(sec)]:
            if (action := pick(actions, which)) is not None:
                proca.update("actions", action, "inserted_at", BASE + timedelta(seconds=sec))
        case "action supporter", [int(which), int(who)]:
            if (action := pick(actions, which)) is not None:
                proca.update("actions", action, "supporter_id", pick(supporters, who))
        case "supporter status", [int(which), int(status)]:
            if (supporter := pick(supporters, which)) is not None:
                proca.update("supporters", supporter, "processing_status", status)
        case "dupe rank", [int(which), rank]:
            if (supporter := pick(supporters, which)) is not None:
                proca.update("supporters", supporter, "dupe_rank", rank)
        case "area", [int(which), int(area)]:
            if (supporter := pick(supporters, which)) is not None:
                proca.update("supporters", supporter, "area", AREAS[area])
        case "fingerprint", [int(which), fp]:
            if (supporter := pick(supporters, which)) is not None:
                value = None if fp is None else FINGERPRINTS[fp]  # type: ignore[index]
                proca.update("supporters", supporter, "fingerprint", value)
        case "page extra", [int(page), int(extra)]:
            proca.update("action_pages", proca.pages[page], "extra_supporters", extra)
        case "page org", [int(page), org]:
            value = None if org is None else proca.orgs[org]  # type: ignore[index]
            proca.update("action_pages", proca.pages[page], "org_id", value)
        case "campaign status", [int(campaign), int(status)]:
            proca.update("campaigns", proca.campaigns[campaign], "status", status)
        case "delete action", [int(which)]:
            if (action := pick(actions, which)) is not None:
                proca.conn.execute("DELETE FROM actions WHERE id = %s", (action,))
            return True
        case "delete supporter", [int(which)]:
            if (supporter := pick(supporters, which)) is not None:
                # As Proca erases a person: their actions stay, without a supporter.
                proca.conn.execute("DELETE FROM supporters WHERE id = %s", (supporter,))
            return True
        case _:
            raise AssertionError(f"unknown change {change!r}")
    return False


def check(
    url: str,
    opened: AbstractContextManager[Refresher],
    steps: list[tuple[object, ...]],
    *,
    feed: bool,
) -> None:
    """Apply the steps one by one, refreshing after each; the figures must be a fresh full
    calculation's every time. On the feed every refresh after the first is incremental."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE actions, supporters, action_pages, campaigns, orgs RESTART IDENTITY CASCADE"
        )
        proca = Proca(conn)
        proca.setup()
        # Every change is refreshed at once, closed campaigns included (slow interval 0).
        with opened as refresher:
            snapshot, _ = refresher.run()
            refresher.settle()
            for step in steps:
                deleted = apply(proca, step)
                snapshot, report = refresher.run(full=deleted and not feed)
                refresher.settle()
                with psycopg.connect(url) as fresh:
                    expected = calculate(fresh).campaigns
                    assert proca_figures(fresh) == expected, "the full calculation is Proca's"
                assert snapshot.campaigns == expected, f"after {step} ({report.kind})"
                if feed:
                    assert report.kind == "incremental", step


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# A few rows first, so that the changes after them (deletes too) have rows to change.
STEPS = st.tuples(
    st.lists(creations, min_size=2, max_size=6), st.lists(changes, min_size=1, max_size=16)
).map(lambda both: both[0] + both[1])


@SETTINGS
@given(steps=STEPS, indexed=st.booleans())
def test_incremental_refresh_equals_a_full_calculation_after_every_change(
    database_url: str,
    refreshing: Refreshing,
    steps: list[tuple[object, ...]],
    indexed: bool,
) -> None:
    """The updated-at fallback, reading whole tables or, with the indexes, a window."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for statement in (s for s in RECOMMENDED_INDEXES if "updated_at" in s):
            name = statement.split()[5]
            conn.execute((statement if indexed else f"DROP INDEX IF EXISTS {name}").encode())
    check(database_url, refreshing(overlap=1), steps, feed=False)


@SETTINGS
@given(steps=STEPS)
def test_feed_refresh_equals_a_full_calculation_after_every_change(
    logical_url: str, steps: list[tuple[object, ...]]
) -> None:
    """The logical feed: deletes and all, every refresh incremental."""
    check(logical_url, feed_refresher(logical_url), steps, feed=True)
