"""The demo data set, loaded into real PostgreSQL, and the trickle of simulated actions against a
real server: the data set is Proca-shaped and the same at every load, and the trickle's figures
survive a sync."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest

from proca_stats.client import StatsClient
from proca_stats.server.app import StatsServer
from proca_stats.server.demo import DemoRefused, Loaded, Trickle, load_demo
from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate
from tests.support.figures import figures
from tests.support.servers import resync
from tests.support.waiting import wait_for


def scalar(url: str, query: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(query.encode()).fetchone()
    assert row is not None
    return int(row[0])


def by_name(url: str) -> dict[str, CampaignCounters]:
    """Every campaign's figures, by campaign name (ids depend on what the database held)."""
    with psycopg.connect(url) as conn:
        names = dict(conn.execute("SELECT id, name FROM campaigns").fetchall())
    with psycopg.connect(url) as conn:
        snapshot = calculate(conn)
    return {names[cid]: counters for cid, counters in snapshot.campaigns.items()}


def test_the_demo_is_shaped_like_a_proca_database(create_database: Callable[[], str]) -> None:
    url = create_database()  # not even the tables: the load creates them
    loaded = load_demo(url)
    assert loaded == Loaded(campaigns=6, supporters=3150, actions=3945)

    def count(where: str, table: str = "supporters") -> int:
        return scalar(url, f"SELECT count(*) FROM {table} WHERE {where}")

    assert scalar(url, "SELECT count(*) FROM orgs") == 4
    with psycopg.connect(url) as conn:  # live, closed and ignored campaigns
        assert {s for (s,) in conn.execute("SELECT status FROM campaigns")} == {0, 1, 2}
    assert count("extra_supporters > 0", "action_pages") >= 3
    assert count("extra_supporters < 0", "action_pages") == 1
    assert count("dupe_rank > 0") > 300  # duplicates of a fingerprint in a campaign
    assert count("dupe_rank IS NULL") > 0  # not ranked yet
    assert count("processing_status IN (0, 1, 2)") > 300  # new, confirming, rejected
    assert count("area IS NULL") > 0
    assert scalar(url, "SELECT count(DISTINCT area) FROM supporters") >= 8
    assert count("testing", "actions") > 0
    assert count("supporter_id IS NULL", "actions") > 0
    assert count("processing_status = 4", "actions") > 0  # delivered counts as accepted


def test_the_demo_gives_the_same_figures_at_every_load(
    create_database: Callable[[], str],
) -> None:
    first, second = create_database(), create_database()
    load_demo(first)
    load_demo(second)
    figures_of = by_name(first)
    assert figures_of == by_name(second)
    # Pinned, so that a change of machine or PostgreSQL version that changed them shows.
    assert {name: counters.supporters for name, counters in figures_of.items()} == {
        "demo_save_the_bees": 1147,
        "demo_clean_air": 718,
        "demo_fair_tech": 396,
        "demo_old_forest": 218,
        "demo_right_to_repair": 165,
        "demo_test_run": 34,
    }
    fair_tech = figures_of["demo_fair_tech"]
    assert sorted(fair_tech.supporters_by_org.values()) == [30, 366]  # an org with extra only
    assert figures_of["demo_save_the_bees"].actions_by_type == {
        "signature": 1017,
        "share": 250,
        "donation": 31,
    }


def test_a_database_with_rows_is_refused_unless_forced(database_url: str) -> None:
    load_demo(database_url)
    with pytest.raises(DemoRefused, match="holds Proca rows already; --force adds the demo"):
        load_demo(database_url)
    assert scalar(database_url, "SELECT count(*) FROM campaigns") == 6  # unchanged
    assert load_demo(database_url, force=True).campaigns == 6
    assert scalar(database_url, "SELECT count(*) FROM campaigns") == 12  # beside, not instead


def test_the_trickles_figures_survive_a_sync(
    database_url: str, start_server: Callable[..., StatsServer]
) -> None:
    load_demo(database_url)
    server = start_server(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    live = sorted(live_ids(database_url))
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        before = {cid: figures(client.get_stats(cid)) for cid in live}
        trickle = Trickle(database_url, f"127.0.0.1:{server.port}")
        trickle.start()
        try:
            wait_for(lambda: trickle.sent >= 8, timeout=30, what="simulated actions")
        finally:
            trickle.stop()
        moved = {cid: figures(client.get_stats(cid)) for cid in live}
        resync(server)
        synced = {cid: figures(client.get_stats(cid)) for cid in live}
    assert moved != before
    assert sum(f.supporters for f in moved.values()) > sum(f.supporters for f in before.values())
    assert synced == moved  # stored as Proca stores them: the database agrees


def live_ids(url: str) -> set[int]:
    with psycopg.connect(url) as conn:
        return {cid for (cid,) in conn.execute("SELECT id FROM campaigns WHERE status = 0")}
