"""Increments with an action id (docs/sync.md): counted once, never lost at a swap.

The races are real: a calculation on the test's database is held up by a lock
another transaction keeps on ``actions``, Increments arrive while it waits, and
the lock is released by the test. No sleeps: the test waits for PostgreSQL to
report the calculation as waiting for the lock.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import pytest

from proca_stats.client import StatsClient
from proca_stats.server.app import StatsServer
from proca_stats.server.state.counters import CampaignCounters, Increment
from proca_stats.server.state.handover import swap_in
from proca_stats.server.state.limits import Limits
from proca_stats.server.state.store import StatsStore
from tests.support.database import Refreshing, actions_locked, waiting_for_actions
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for


def figures(client: StatsClient, campaign_id: int) -> tuple[int, dict[str, int], dict[int, int]]:
    stats = client.get_stats(campaign_id)
    return stats.supporters, dict(stats.actions_by_type), dict(stats.supporters_by_org)


@pytest.fixture
def world(db: ProcaData) -> tuple[int, int, int]:
    """An org, its live campaign and a page."""
    org = db.org()
    campaign = db.campaign(org)
    return org, campaign, db.page(campaign, org)


def test_a_retried_increment_counts_once_and_says_so(client: StatsClient) -> None:
    counted = [
        client.increment(1, 2, "signature", area="DE", new_supporter=True, action_id=77)
        for _ in range(3)
    ]
    assert counted == [True, False, False]  # IncrementResponse.counted
    assert client.increment(1, 2, "signature", new_supporter=False, action_id=78) is True
    assert figures(client, 1) == (1, {"signature": 2}, {2: 1})


def test_an_increment_without_action_id_counts_every_time(client: StatsClient) -> None:
    for _ in range(2):
        assert client.increment(1, 2, "signature", new_supporter=True) is True
    assert figures(client, 1) == (2, {"signature": 2}, {2: 2})


@pytest.mark.parametrize("full", [True, False], ids=["full", "incremental"])
def test_increments_racing_a_calculation_are_neither_lost_nor_doubled(
    db: ProcaData,
    world: tuple[int, int, int],
    start_server: Callable[..., StatsServer],
    database_url: str,
    full: bool,
) -> None:
    org, campaign, page = world
    seen_before = db.person(campaign, page, b"alice")  # stored before the calculation
    server = start_server(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    early = db.person(campaign, page, b"bob")  # committed before the next snapshot is taken
    with StatsClient(f"127.0.0.1:{server.port}") as client, db.conn.cursor() as watch:
        before = server.store.synced_at
        with actions_locked(database_url) as locked:
            # Stored by a transaction that commits only after the snapshot is taken.
            supporter = ProcaData(locked).supporter(campaign, page, b"carol")
            late = ProcaData(locked).action(campaign, page, supporter)
            server.sync.request(full=full)
            wait_for(lambda: waiting_for_actions(watch.connection), what="a blocked calculation")
            # The calculation has taken its snapshot and waits. Increments arrive:
            client.increment(campaign, org, "signature", new_supporter=True, action_id=early)
            client.increment(campaign, org, "signature", new_supporter=True, action_id=late)
            client.increment(campaign, org, "signature", new_supporter=True, action_id=late)
            client.increment(campaign, org, "signature", new_supporter=True)  # no id: as Proca
            # In memory now: the old figures (alice) plus four Increments, the retry refused.
            assert figures(client, campaign) == (4, {"signature": 4}, {org: 4})
        wait_for(lambda: server.store.synced_at != before, what="the swap")
        # The snapshot saw alice and bob (bob's Increment is not counted again), not carol:
        # carol's Increment is re-applied; the one without an id is replaced by the snapshot.
        assert figures(client, campaign) == (3, {"signature": 3}, {org: 3})
        # A retry after the swap still counts once.
        client.increment(campaign, org, "signature", new_supporter=True, action_id=late)
        assert figures(client, campaign) == (3, {"signature": 3}, {org: 3})
        resync(server)  # sees carol: the database alone gives the figures, nothing doubled
        assert figures(client, campaign) == (3, {"signature": 3}, {org: 3})
    assert seen_before < early < late


def test_an_increment_whose_action_never_reaches_the_database_is_forgotten(
    world: tuple[int, int, int], server: StatsServer, client: StatsClient
) -> None:
    org, campaign, _ = world
    client.increment(campaign, org, "signature", new_supporter=True, action_id=10_000)
    assert figures(client, campaign) == (1, {"signature": 1}, {org: 1})
    resync(server)  # taken after the Increment, and the action is not there
    assert figures(client, campaign) == (0, {}, {})
    assert server.store.remembered() == 0


def test_increments_arriving_between_the_look_up_and_the_swap_are_applied(
    db: ProcaData,
    world: tuple[int, int, int],
    refreshing: Refreshing,
) -> None:
    """The store refuses a swap prepared before the latest arrival; the newcomer is handled."""
    org, campaign, page = world
    store = StatsStore()
    with refreshing(overlap=60) as refresher:
        snapshot, _ = refresher.run(increments_before=store.arrivals())
        swap_in(store, snapshot, refresher.seen)
        refresher.settle()
        snapshot, _ = refresher.run(increments_before=store.arrivals())
        stored = db.person(campaign, page, b"dave")  # committed after the snapshot was taken
        missing = stored + 1_000  # an action the database does not have
        store.increment(Increment(campaign, org, "signature", None, True, action_id=missing))
        calls: list[Collection[int]] = []

        def seen_then_arrival(ids: Collection[int]) -> set[int]:
            """The real look-up; an Increment arrives right after the first one."""
            calls.append(list(ids))
            if len(calls) == 1:
                store.increment(Increment(campaign, org, "signature", None, True, stored))
            return refresher.seen(ids)

        assert swap_in(store, snapshot, seen_then_arrival) == 2
        refresher.settle()
        assert calls == [[missing], [stored]]
        # The snapshot (taken before dave was stored) had nothing; both are re-applied.
        assert store.get(campaign)[0] == CampaignCounters(2, {"signature": 2}, {}, {org: 2})
        snapshot, _ = refresher.run(increments_before=store.arrivals())
        assert swap_in(store, snapshot, refresher.seen) == 0
        refresher.settle()
        # Dave is in the database now; the missing action never was: forgotten.
        assert store.get(campaign)[0] == CampaignCounters(1, {"signature": 1}, {}, {org: 1})
        assert store.remembered() == 1  # dave's id, kept one generation against retries


def test_action_ids_remembered_between_syncs_are_capped_oldest_first() -> None:
    """While no sync comes, memory stays bounded: the oldest ids are forgotten first."""
    store = StatsStore(Limits(max_action_ids=3))
    for action_id in range(1, 6):
        assert store.increment(Increment(1, 2, "signature", None, False, action_id=action_id))
    assert store.remembered() == 3
    assert len(store.arrived_since(0)[0]) <= 3
    assert not store.increment(
        Increment(1, 2, "signature", None, False, action_id=5)
    )  # still known
    assert store.increment(Increment(1, 2, "signature", None, False, action_id=1))  # forgotten
    counters, _ = store.get(1)
    assert counters.actions_by_type == {"signature": 6}
