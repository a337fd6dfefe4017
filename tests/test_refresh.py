"""The refresh schedules: closed campaigns at the slow rate, the full calculation as safety net."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate
from proca_stats.server.sync.refresh import MANY_CHANGES, Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, LOOKUP_CONNECTIONS, LOOKUP_PART
from tests.support.database import Refreshing
from tests.support.proca_data import BASE_TIME, ProcaData


def full(database_url: str) -> dict[int, CampaignCounters]:
    with psycopg.connect(database_url) as conn:
        return calculate(conn).campaigns


def add_people(
    db: ProcaData, campaign: int, page: int, count: int, *, acted_later: timedelta = timedelta()
) -> None:
    """``count`` accepted supporters (areas A0 to A2), each with one accepted action, in one
    statement. The supporters are stamped a second apart before BASE_TIME (a refresh reads
    again the rows stamped with the newest time it saw, and only those), their actions
    ``acted_later``."""
    db.conn.execute(
        """WITH added AS (
               INSERT INTO supporters (campaign_id, action_page_id, fingerprint,
                                       processing_status, dupe_rank, area, updated_at)
               SELECT %(c)s, %(p)s, int4send(g), 3, 0, 'A' || g %% 3,
                      %(at)s - make_interval(secs => g)
               FROM generate_series(1, %(n)s) g
               RETURNING id, updated_at)
           INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id,
                                processing_status, inserted_at, updated_at)
           SELECT id, 'petition', %(c)s, %(p)s, 3, updated_at, updated_at + %(later)s
           FROM added""",
        {"c": campaign, "p": page, "n": count, "at": BASE_TIME, "later": acted_later},
    )


def refresh(refresher: Refresher) -> tuple[dict[int, CampaignCounters], str]:
    snapshot, report = refresher.run()
    refresher.settle()
    return snapshot.campaigns, report.kind


def test_closed_campaigns_wait_for_the_slow_refresh(
    db: ProcaData, refreshing: Refreshing, database_url: str
) -> None:
    org = db.org()
    live, closed = db.campaign(org), db.campaign(org, status=1)
    live_page, closed_page = db.page(live, org), db.page(closed, org)
    with refreshing(slow_interval=3600) as refresher:
        assert refresh(refresher) == (full(database_url), "full")
        db.person(live, live_page, b"alice")
        db.person(closed, closed_page, b"bob")
        figures, kind = refresh(refresher)
        assert kind == "incremental"
        assert figures[live] == full(database_url)[live]  # live: at once
        assert figures[closed] == CampaignCounters()  # closed: not before the slow refresh
        snapshot, _ = refresher.run(full=True)
        refresher.settle()
        assert snapshot.campaigns == full(database_url)


def test_a_campaign_that_becomes_live_is_recounted_at_once(
    db: ProcaData, refreshing: Refreshing, database_url: str
) -> None:
    org = db.org()
    closed = db.campaign(org, status=1)
    page = db.page(closed, org)
    with refreshing(slow_interval=3600) as refresher:
        refresh(refresher)
        db.person(closed, page, b"carol")
        assert refresh(refresher)[0][closed] == CampaignCounters()
        db.conn.execute("UPDATE campaigns SET status = 0 WHERE id = %s", (closed,))
        assert refresh(refresher)[0] == full(database_url)


def test_deletes_are_left_to_the_safety_net(
    db: ProcaData, refreshing: Refreshing, database_url: str
) -> None:
    """A delete leaves no trace; the full calculation at --full-sync-interval sees it."""
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    gone = db.person(campaign, page, b"dave")
    db.person(campaign, page, b"erin")
    with refreshing(full_interval=1e-6) as refresher:
        before, _ = refresh(refresher)
        db.conn.execute("DELETE FROM actions WHERE id = %s", (gone,))
        # The interval (1 µs) has passed by the next refresh: it is a full calculation.
        after, kind = refresh(refresher)
        assert kind == "full"
        assert after == full(database_url) != before


def test_many_changes_make_a_full_calculation(
    db: ProcaData, refreshing: Refreshing, database_url: str
) -> None:
    """Past MANY_CHANGES changed rows a full calculation costs less than a refresh, and gives the
    same figures."""
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    db.person(campaign, page, b"fred")
    with refreshing() as refresher:
        refresh(refresher)
        add_people(db, campaign, page, MANY_CHANGES + 1, acted_later=timedelta(days=1))
        figures, kind = refresh(refresher)
        assert kind == "full"
        assert figures == full(database_url)
        assert figures[campaign].supporters == MANY_CHANGES + 2
        db.person(campaign, page, b"gina", at=BASE_TIME + timedelta(days=2))
        assert refresh(refresher) == (full(database_url), "incremental")


@pytest.mark.parametrize("spare", [True, False], ids=["spare connections", "none to spare"])
def test_many_keys_are_looked_up_in_parts(
    db: ProcaData, refreshing: Refreshing, database_url: str, spare: bool
) -> None:
    """A large key set is split in parts, read on several connections at once, or one after
    the other when the pool has none to spare; the figures are a full calculation's either
    way, with keys that changed org, stopped counting, or did not change."""
    org, other_org = db.org(), db.org()
    campaign = db.campaign(org)
    page, other_page = db.page(campaign, org), db.page(campaign, other_org)
    people = LOOKUP_CONNECTIONS * LOOKUP_PART
    add_people(db, campaign, page, people)
    # Without spare connections: the two that keep snapshots and the one that reads in them.
    with refreshing(connections=CONNECTIONS if spare else 3) as refresher:
        refresh(refresher)
        changed = BASE_TIME + timedelta(days=1)
        # Everyone acted again on the other org's page: every other person's new action was
        # inserted first (it moves them to the other org); every third one's first was rejected.
        db.conn.execute(
            """INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id,
                                    processing_status, inserted_at, updated_at)
               SELECT id, 'petition', %(c)s, %(p)s, 3,
                      updated_at + CASE WHEN id %% 2 = 0 THEN -1 ELSE 1 END * interval '1 hour',
                      %(at)s
               FROM supporters""",
            {"c": campaign, "p": other_page, "at": changed},
        )
        db.conn.execute(
            """UPDATE actions SET processing_status = 2, updated_at = %(at)s
               WHERE action_page_id = %(p)s AND supporter_id %% 3 = 0""",
            {"p": page, "at": changed},
        )
        snapshot, report = refresher.run()
        refresher.settle()
        assert (report.kind, report.key_parts) == ("incremental", LOOKUP_CONNECTIONS)
        assert snapshot.campaigns == full(database_url)
        by_org = snapshot.campaigns[campaign].supporters_by_org
        assert by_org[org] < people // 2 < by_org[other_org]  # the figures did move
