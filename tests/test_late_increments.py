"""Late Increments (part of SPEC §3): counted after the swap of a snapshot that holds their action.

Such an Increment is taken back once looked up in that snapshot; a fan-out message whose
sending transaction that snapshot saw commit is not applied at all. The races are forced, on
real servers and a real PostgreSQL: a refresh is held between its snapshot and its swap by a
lock another transaction keeps on ``supporters`` (a table the refresh reads and the look-up
does not), and a fan-out message is held in the receiving replica's listener (its test hook)
until a refresh has swapped in a snapshot that holds its action. No sleeps: the tests wait
for PostgreSQL to report the lock wait, for the listener to hold the message, or for the
metrics to count what happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from proca_stats.client import StatsClient
from proca_stats.server.app import StatsServer
from proca_stats.server.fanout.payload import PayloadError, decode, encode
from proca_stats.server.fanout.replicas import Publisher
from proca_stats.server.metrics import FanoutMetrics
from proca_stats.server.settings import ServeConfig
from proca_stats.server.state.counters import (
    CampaignCounters,
    Increment,
    Snapshot,
    decremented,
    incremented,
    new_keys,
)
from proca_stats.server.state.handover import swap_in
from proca_stats.server.state.late import LateCheck
from proca_stats.server.state.limits import Limits
from proca_stats.server.state.store import Held, StatsStore
from proca_stats.server.sync.held import ASIDE_CONNECTIONS, Visibility
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS
from tests.support.database import Refreshing, table_locked, waiting_for_lock
from tests.support.figures import figures
from tests.support.metrics import sample
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for
from tests.test_fanout import truth

TAKEN_BACK = "proca_stats_late_increments_taken_back_total"
HELD = "proca_stats_fanout_held_total"
APPLIED = "proca_stats_fanout_delivery_seconds_count"  # observed once a message is applied
INTERVALS = pytest.mark.parametrize(
    "interval_ms", [0, 3_600_000], ids=["sync-interval-0", "sync-interval-1h"]
)


@pytest.fixture
def world(db: ProcaData) -> tuple[int, int, int]:
    """An org, its live campaign and a page."""
    org = db.org()
    campaign = db.campaign(org)
    return org, campaign, db.page(campaign, org)


@contextmanager
def delivery_held(server: StatsServer) -> Iterator[threading.Event]:
    """The next message the server's listener receives waits until the block ends; the event
    yielded is set once it waits."""
    arrived, release = threading.Event(), threading.Event()

    def hold() -> None:
        arrived.set()
        release.wait(timeout=30)

    assert server.fanout is not None
    server.fanout.listener.before_apply = hold
    try:
        yield arrived
    finally:
        server.fanout.listener.before_apply = lambda: None
        release.set()


def replica(
    start_server: Callable[..., StatsServer], database_url: str, **config: object
) -> StatsServer:
    """A server with the fan-out, once its first calculation is in and it listens."""
    server = start_server(database_url, fanout=True, **config)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    wait_for(lambda: sample(server, "proca_stats_fanout_connected") == 1, what="listening")
    return server


def publisher(database_url: str, name: str) -> Publisher:
    """A replica's publisher of its own, sending as replica ``name``."""
    return Publisher(
        lambda app: psycopg.connect(database_url, autocommit=True, application_name=app),
        ServeConfig().fanout_channel,
        name,
        FanoutMetrics(CollectorRegistry()),
    )


@INTERVALS
def test_late_increments_are_taken_back_within_one_look_up(
    db: ProcaData,
    world: tuple[int, int, int],
    start_server: Callable[..., StatsServer],
    database_url: str,
    interval_ms: int,
) -> None:
    org, campaign, page = world
    alice = db.person(campaign, page, b"alice")
    server = start_server(database_url, sync_interval_ms=interval_ms)
    wait_for(lambda: server.store.synced_at, what="the first calculation")  # it holds alice
    bob, carol = db.person(campaign, page, b"bob"), db.person(campaign, page, b"carol")
    with StatsClient(f"127.0.0.1:{server.port}") as client:

        def increment(action_id: int) -> None:
            client.increment(campaign, org, "signature", new_supporter=True, action_id=action_id)

        before = server.store.synced_at
        with table_locked(database_url, "supporters"):
            server.sync.request()
            wait_for(lambda: waiting_for_lock(db.conn, "supporters"), what="a held refresh")
            # Its snapshot is taken (alice, bob, carol); the figures still come from the first.
            increment(alice)  # late: the first snapshot holds alice
            increment(bob)  # not late: bob committed after the first snapshot
            wait_for(lambda: sample(server, TAKEN_BACK) == 1, what="alice's taken back")
            assert server.store.get(campaign)[0] == CampaignCounters(
                2, {"signature": 2}, {}, {org: 2}
            )
        wait_for(lambda: server.store.synced_at != before, what="the held refresh's swap")
        swapped = server.store.synced_at
        increment(carol)  # late for the snapshot just swapped in
        increment(alice)  # retries: refused, their ids are remembered
        increment(bob)
        wait_for(lambda: sample(server, TAKEN_BACK) == 2, what="carol's taken back")
        assert figures(client.get_stats(campaign)) == truth(database_url)[campaign]
        assert truth(database_url)[campaign].supporters == 3
        assert server.store.synced_at == swapped  # no sync set them right: the look-ups did


@INTERVALS
def test_a_retry_of_a_forgotten_action_id_is_taken_back(
    db: ProcaData,
    world: tuple[int, int, int],
    start_server: Callable[..., StatsServer],
    database_url: str,
    interval_ms: int,
) -> None:
    """Past --max-action-ids the oldest ids are forgotten; the first forgotten asks for a
    refresh, whose snapshot holds their actions, so a retry of one is undone (by the late
    check, or by the handover of the refresh that forgetting again asks for)."""
    org, campaign, page = world
    server = start_server(
        database_url, sync_interval_ms=interval_ms, limits=Limits(max_action_ids=3)
    )
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    stored = [db.person(campaign, page, f"person{n}".encode()) for n in range(4)]
    with StatsClient(f"127.0.0.1:{server.port}") as client:

        def increment(action_id: int) -> None:
            client.increment(campaign, org, "signature", new_supporter=True, action_id=action_id)

        before = server.store.synced_at
        for action_id in stored[:3]:
            increment(action_id)
        assert server.store.synced_at == before
        increment(stored[3])  # the first id is forgotten
        wait_for(lambda: server.store.synced_at != before, what="the refresh it asked for")
        increment(stored[0])  # a retry the store cannot tell from a first Increment
        expected = truth(database_url)[campaign]
        assert expected.supporters == 4
        wait_for(lambda: figures(client.get_stats(campaign)) == expected, what="the retry undone")
    assert server.store.remembered() <= 3


def test_the_first_id_forgotten_since_a_swap_asks_once() -> None:
    asked: list[None] = []
    store = StatsStore(Limits(max_action_ids=2), forgetting=lambda: asked.append(None))
    for action_id in range(1, 6):
        store.increment(Increment(1, 2, "signature", None, False, action_id))
    assert len(asked) == 1
    store.remember_held([6, 7])
    assert len(asked) == 1
    snapshot = Snapshot({}, datetime.now(), store.arrivals())
    swap_in(store, snapshot, lambda ids: set())
    store.remember_held([8, 9, 10])
    assert len(asked) == 2


def test_a_late_increment_without_action_id_counts_as_in_proca(
    db: ProcaData,
    world: tuple[int, int, int],
    server: StatsServer,
    client: StatsClient,
    database_url: str,
) -> None:
    """Nothing names its action, so nothing can tell it is late: the next calculation corrects."""
    org, campaign, page = world
    db.person(campaign, page, b"alice")
    resync(server)
    client.increment(campaign, org, "signature", new_supporter=True)
    assert figures(client.get_stats(campaign)).supporters == 2
    resync(server)
    assert figures(client.get_stats(campaign)) == truth(database_url)[campaign]


@INTERVALS
@pytest.mark.parametrize("by_transaction", [True, False], ids=["by-transaction", "by-look-up"])
def test_a_message_delivered_after_a_refresh_that_holds_its_action_counts_once(
    db: ProcaData,
    world: tuple[int, int, int],
    start_server: Callable[..., StatsServer],
    database_url: str,
    interval_ms: int,
    by_transaction: bool,
) -> None:
    """Replica b gets a's message only after its own refresh saw the action: b drops it by its
    transaction, or (when the sync reads another database, where transaction ids mean nothing)
    counts it and takes it back once looked up."""
    org, campaign, page = world
    elsewhere = {} if by_transaction else {"sync_database_url": database_url}
    a, b = (
        replica(start_server, database_url, sync_interval_ms=interval_ms, **elsewhere)
        for _ in range(2)
    )
    alice = db.person(campaign, page, b"alice")
    with StatsClient(f"127.0.0.1:{a.port}") as to_a, StatsClient(f"127.0.0.1:{b.port}") as to_b:
        with delivery_held(b) as arrived:
            to_a.increment(campaign, org, "signature", new_supporter=True, action_id=alice)
            wait_for(arrived.is_set, what="b to hold a's message")
            resync(b)  # its snapshot holds alice, and saw a's NOTIFY commit
            swapped = b.store.synced_at
        wait_for(lambda: sample(b, APPLIED) == 1, what="b to apply a's message")
        wait_for(lambda: sample(b, TAKEN_BACK) + sample(b, HELD) == 1, what="b to decide")
        to_b.increment(campaign, org, "signature", new_supporter=True, action_id=alice)  # retry
        expected = truth(database_url)[campaign]
        assert expected.supporters == 1
        assert a.store.get(campaign)[0] == b.store.get(campaign)[0] == expected
        assert figures(to_b.get_stats(campaign)) == expected
    assert (sample(b, HELD), sample(b, TAKEN_BACK)) == ((1, 0) if by_transaction else (0, 1))
    assert sample(b, "proca_stats_fanout_published_total") == 0  # the retry was refused
    assert b.store.synced_at == swapped


def test_a_held_message_still_counts_its_increments_without_action_id(
    db: ProcaData,
    world: tuple[int, int, int],
    start_server: Callable[..., StatsServer],
    database_url: str,
) -> None:
    """Of a message whose transaction the snapshot saw commit, only the Increments with an
    action id are known to be in it; the others count, as in Proca."""
    org, campaign, page = world
    b = replica(start_server, database_url)
    alice = db.person(campaign, page, b"alice")
    another = publisher(database_url, "another")
    for inc in (
        Increment(campaign, org, "signature", None, True, alice),
        Increment(campaign, org, "share", None, False),
    ):
        another.publish(inc)  # both queued before the thread starts: one message
    with delivery_held(b) as arrived:
        another.start()
        another.stop()
        wait_for(arrived.is_set, what="b to hold the message")
        resync(b)
    wait_for(lambda: sample(b, APPLIED) == 1, what="b to apply the message")
    assert sample(b, HELD) == 1
    expected = truth(database_url)[campaign]
    assert b.store.get(campaign)[0] == CampaignCounters(
        1, {"signature": 1, "share": 1}, {}, {org: 1}
    )
    assert expected == CampaignCounters(1, {"signature": 1}, {}, {org: 1})


# --- the rules, on a real database without a server -------------------------------------------


def sync(
    refresher: Refresher, store: StatsStore, held: Callable[[Held], Held] = lambda h: h
) -> None:
    """One refresh, swapped in as the server does (``held`` may wrap the snapshot's handle)."""
    snapshot, _ = refresher.run(increments_before=store.arrivals())
    swap_in(store, snapshot, refresher.seen, held(refresher.held()))
    refresher.settle()


@pytest.fixture
def refresher(refreshing: Refreshing) -> Iterator[Refresher]:
    with refreshing(connections=CONNECTIONS + ASIDE_CONNECTIONS) as opened:
        yield opened


def test_a_look_up_answered_after_another_swap_changes_nothing(
    db: ProcaData, world: tuple[int, int, int], refresher: Refresher, database_url: str
) -> None:
    org, campaign, page = world
    alice = db.person(campaign, page, b"alice")
    store = StatsStore()
    sync(refresher, store)  # holds alice
    store.increment(Increment(campaign, org, "signature", None, True, alice))  # late
    check = store.to_check()
    assert check is not None
    seen = check.held.seen([alice])
    assert seen == {alice}
    sync(refresher, store)  # its handover decided alice's Increment: in its snapshot
    assert store.take_back(check, seen) == 0
    assert store.get(campaign)[0] == truth(database_url)[campaign]
    assert store.to_check() is None  # looked up by the handover: nothing left to check


class SwapsFirst:
    """A held snapshot whose look-up comes after the next refresh has swapped in and released
    it: the look-up then fails, as it does when the sync overtakes a round."""

    def __init__(self, held: Held, refresher: Refresher, store: StatsStore) -> None:
        self._held, self._refresher, self._store = held, refresher, store

    def seen(self, action_ids: Collection[int]) -> set[int]:
        sync(self._refresher, self._store)
        return self._held.seen(action_ids)

    def sees_transaction(self, xid: int) -> bool:
        return self._held.sees_transaction(xid)


def test_a_round_overtaken_by_a_refresh_is_no_error(
    db: ProcaData, world: tuple[int, int, int], refresher: Refresher, database_url: str
) -> None:
    org, campaign, page = world
    alice = db.person(campaign, page, b"alice")
    store = StatsStore()
    sync(refresher, store, lambda held: SwapsFirst(held, refresher, store))
    store.increment(Increment(campaign, org, "signature", None, True, alice))  # late
    assert LateCheck(store).look_up() == 0  # the snapshot asked is gone; the swap decided
    assert store.get(campaign)[0] == truth(database_url)[campaign]


def test_taking_back_leaves_the_campaign_as_the_snapshot_counts_the_action(
    db: ProcaData, world: tuple[int, int, int], refresher: Refresher, database_url: str
) -> None:
    """A testing action is held but not counted: its late Increment goes, with the key it added."""
    org, campaign, page = world
    db.person(campaign, page, b"alice")
    bob = db.supporter(campaign, page, b"bob")
    shared = db.action(campaign, page, bob, action_type="share", testing=True)
    store = StatsStore()
    sync(refresher, store)
    store.increment(Increment(campaign, org, "share", None, False, shared))
    assert store.get(campaign)[0].actions_by_type == {"signature": 1, "share": 1}
    assert LateCheck(store).look_up() == 1
    assert store.get(campaign)[0] == truth(database_url)[campaign]
    assert truth(database_url)[campaign].actions_by_type == {"signature": 1}


def test_visibility_is_pg_visible_in_snapshot(database_url: str) -> None:
    """The fan-out's test of a transaction against a snapshot gives PostgreSQL's own answer,
    for transactions ended before it, running through it, and started after it."""
    with psycopg.connect(database_url, autocommit=True) as admin:
        running = [psycopg.connect(database_url) for _ in range(3)]
        try:
            xids = [
                int(c.execute("SELECT pg_current_xact_id()::text").fetchall()[0][0])
                for c in running
            ]
            running[1].commit()  # ended before the snapshot: visible
            (snapshot,) = admin.execute("SELECT pg_current_snapshot()::text").fetchall()[0]
            running[0].commit()  # ended after it: still not visible in it
            (later,) = admin.execute("SELECT pg_current_xact_id()::text").fetchall()[0]
            low, high = min(xids) - 3, int(later) + 3
            answers = admin.execute(
                "SELECT x, pg_visible_in_snapshot(x::text::xid8, %s::pg_snapshot)"
                " FROM generate_series(%s::bigint, %s) x",
                (snapshot, low, high),
            ).fetchall()
        finally:
            for conn in running:
                conn.close()
    visibility = Visibility.parse(snapshot)
    assert {x: visibility.sees(x) for x, _ in answers} == dict(answers)
    assert [visibility.sees(x) for x in xids] == [False, True, False]


def test_a_published_payload_names_the_transaction_that_sent_it(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'LISTEN "{ServeConfig().fanout_channel}"'.encode())
        tagged = publisher(database_url, "tagged")
        (before,) = conn.execute("SELECT pg_current_xact_id()::text").fetchall()[0]
        tagged.publish(Increment(1, 2, "signature", None, True, 7))
        tagged.start()
        tagged.stop()
        (notify,) = list(conn.notifies(timeout=5, stop_after=1))
        (after,) = conn.execute("SELECT pg_current_xact_id()::text").fetchall()[0]
        message = decode(notify.payload)
        assert message.transaction is not None
        assert int(before) < message.transaction < int(after)
        (status,) = conn.execute(
            "SELECT pg_xact_status(%s::text::xid8)", (str(message.transaction),)
        ).fetchall()[0]
        assert status == "committed"
    assert message.increments == [Increment(1, 2, "signature", None, True, 7)]


@pytest.mark.parametrize("xid", ["-1", "18446744073709551616", '"5"', "true", "1.5"])
def test_a_payload_with_a_wrong_transaction_id_is_refused(xid: str) -> None:
    (payload,) = encode("r", 0, 1.0, [Increment(1, 2, "s", None, True)])
    with pytest.raises(PayloadError):
        decode(payload[:-1] + f',"x":{xid}}}')


def test_a_payload_without_a_transaction_id_is_still_valid() -> None:
    """An older replica's: it is counted, and looked up like any Increment after a swap."""
    (payload,) = encode("r", 0, 1.0, [Increment(1, 2, "s", None, True, 3)])
    assert decode(payload).transaction is None
    assert decode(payload[:-1] + ',"x":18446744073709551615}').transaction == 2**64 - 1


# --- taking an Increment back, as a pure function ----------------------------------------------

increments = st.builds(
    Increment,
    campaign_id=st.just(1),
    org_id=st.integers(1, 3),
    action_type=st.sampled_from(["signature", "share"]),
    area=st.sampled_from([None, "DE", "FR"]),
    new_supporter=st.booleans(),
)


@given(before=st.lists(increments, max_size=8), inc=increments)
def test_taking_an_increment_back_gives_the_counters_it_was_counted_on(
    before: list[Increment], inc: Increment
) -> None:
    counters = CampaignCounters()
    for earlier in before:
        counters = incremented(counters, earlier)
    assert decremented(incremented(counters, inc), inc, new_keys(counters, inc)) == counters


@given(
    before=st.lists(increments, max_size=8), inc=increments, after=st.lists(increments, max_size=8)
)
def test_an_increment_taken_back_after_others_is_as_if_it_never_came(
    before: list[Increment], inc: Increment, after: list[Increment]
) -> None:
    """With new supporters after it (an existing one's Increment may keep a key at 0 that
    taking back removes; see docs/increments.md)."""
    after = [Increment(1, a.org_id, a.action_type, a.area, True) for a in after]
    base = CampaignCounters()
    for earlier in before:
        base = incremented(base, earlier)
    with_it, without = incremented(base, inc), base
    for later in after:
        with_it, without = incremented(with_it, later), incremented(without, later)
    assert decremented(with_it, inc, new_keys(base, inc)) == without
