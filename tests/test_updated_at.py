"""The updated-at fallback: a refresh with nothing new costs next to nothing, and a bulk load is
taken in once, not at every refresh while it stays inside --change-overlap.

On the tests' own PostgreSQL (the logical one), where no other session commits meanwhile."""

from __future__ import annotations

import psycopg
import pytest

from proca_stats.server.database import create_recommended_indexes
from proca_stats.server.sync.changes import UpdatedAt
from proca_stats.server.sync.delta import MANY_CHANGES
from proca_stats.server.sync.refresh import Refresher, RefreshReport
from tests.support.logical_postgres import feed_refresher
from tests.support.proca_data import ProcaData
from tests.test_refresh import full

# People stamped as Proca stamps them (updated_at now), all in one statement.
BULK = """
    WITH added AS (
        INSERT INTO supporters (campaign_id, action_page_id, fingerprint, processing_status,
                                dupe_rank)
        SELECT %(c)s, %(p)s, int4send(g), 3, 0 FROM generate_series(1, %(n)s) g
        RETURNING id)
    INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id,
                         processing_status)
    SELECT id, 'petition', %(c)s, %(p)s, 3 FROM added
"""


def refresh(refresher: Refresher) -> RefreshReport:
    _, report = refresher.run()
    refresher.settle()
    return report


@pytest.mark.parametrize("indexed", [False, True], ids=["Proca's indexes", "recommended indexes"])
def test_nothing_new_reads_nothing_and_a_bulk_load_counts_once(
    logical_url: str, indexed: bool
) -> None:
    if indexed:
        create_recommended_indexes(logical_url)
    with psycopg.connect(logical_url, autocommit=True) as conn:
        db = ProcaData(conn)
        org = db.org()
        campaign = db.campaign(org)
        page = db.page(campaign, org)
        db.person(campaign, page, b"first")
        # Stamped an hour apart at most from one another: all inside a 2-hour overlap.
        with feed_refresher(logical_url, changes=UpdatedAt(overlap=7200)) as refresher:
            refresh(refresher)
            conn.execute(BULK, {"c": campaign, "p": page, "n": MANY_CHANGES + 1})
            assert refresh(refresher).kind == "full"  # a bulk load: cheaper in full
            quiet = refresh(refresher)
            assert (quiet.kind, quiet.rows_read) == ("incremental", 0)  # nothing was asked
            db.org("unrelated")  # a commit elsewhere: the tables are asked again
            again = refresh(refresher)
            assert (again.kind, again.changed_actions, again.changed_supporters) == (
                "incremental",
                0,
                0,
            )
            now = conn.execute("SELECT localtimestamp(0)").fetchone()
            db.person(campaign, page, b"late", at=now and now[0])
            late = refresh(refresher)
            assert (late.changed_actions, late.changed_supporters) == (1, 1)
            snapshot, _ = refresher.run()
            refresher.settle()
    assert snapshot.campaigns == full(logical_url)
    assert snapshot.campaigns[campaign].supporters == MANY_CHANGES + 3
