"""Several replicas on one database: every Increment reaches all of them through LISTEN/NOTIFY.

The load is written the way a caller of Increment works: the action (and,
for a new supporter, the supporter) is stored first, then one replica is told.
So the database's full calculation is what a single server would hold, and
every replica must end up answering exactly that.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import psycopg
import pytest
from prometheus_client import CollectorRegistry

from proca_stats.client import StatsClient
from proca_stats.server.app import StatsServer
from proca_stats.server.database import init_schema
from proca_stats.server.fanout.payload import (
    MAX_PAYLOAD_BYTES,
    PayloadError,
    decode,
    encode,
    sender_prefix,
)
from proca_stats.server.fanout.replicas import LISTENER_NAME, Publisher
from proca_stats.server.metrics import FanoutMetrics
from proca_stats.server.settings import ServeConfig
from proca_stats.server.state.counters import CampaignCounters, Increment, incremented
from proca_stats.server.sync.calculation import calculate
from tests.support.figures import figures
from tests.support.metrics import sample
from tests.support.proca_data import ProcaData
from tests.support.servers import fanout_serving
from tests.support.waiting import wait_for

Serve = Callable[..., tuple[subprocess.Popen[str], int]]
REPLICA = ("--fanout", "--sync-interval", "0")


# --- payloads ---------------------------------------------------------------------------------


def test_a_payload_carries_increments_and_who_sent_them() -> None:
    sent = [
        Increment(1, 2, "signature", "DE", True, 77),
        Increment(3, 4, 'mail "to" target', None, False),
    ]
    (payload,) = encode("replica-a", 5, 1700000000.25, sent)
    message = decode(payload)
    assert (message.replica, message.number, message.accepted_at) == ("replica-a", 5, 1700000000.25)
    assert message.increments == sent
    assert payload.startswith(sender_prefix("replica-a"))
    assert not payload.startswith(sender_prefix("replica"))


def test_a_large_batch_is_split_under_the_limit_in_order_and_numbered() -> None:
    same = Increment(1, 2, "signature", "DE", True)
    sent = [same] * 1500 + [Increment(9, 8, "x" * 255, "y" * 32, False, n) for n in range(1, 200)]
    payloads = encode("r", 10, 0.0, sent)
    assert len(payloads) > 2
    assert all(len(p.encode()) <= MAX_PAYLOAD_BYTES for p in payloads)
    messages = [decode(p) for p in payloads]
    assert [m.number for m in messages] == list(range(10, 10 + len(payloads)))
    assert [inc for m in messages for inc in m.increments] == sent
    # PostgreSQL delivers identical payloads of one transaction once: none may be identical.
    assert len(set(payloads)) == len(payloads)


def test_the_largest_increment_fits_one_payload_whatever_its_characters() -> None:
    largest = Increment(2**63 - 1, 2**63 - 1, "\u2603" * 255, "\U0001f600" * 32, True, 2**63 - 1)
    (payload,) = encode("0123456789abcdef", 2**40, 1e10, [largest])
    assert payload.isascii()
    assert len(payload) <= MAX_PAYLOAD_BYTES
    assert decode(payload).increments == [largest]
    assert len(encode("r", 0, 0.0, [largest] * 3, limit=2500)) == 3


def _payload(**changes: object) -> str:
    message: dict[str, object] = {"r": "a", "n": 0, "t": 1.0, "i": [[1, 2, "s", None, 1, None]]}
    return json.dumps(message | changes)


@pytest.mark.parametrize(
    "payload",
    [
        "not json",
        "[]",
        _payload(r=""),
        _payload(n="1"),
        _payload(t=None),
        _payload(i={}),
        _payload(i=[[0, 2, "s", None, 1, None]]),
        _payload(i=[[1, True, "s", None, 1, None]]),
        _payload(i=[[1, 2, "", None, 1, None]]),
        _payload(i=[[1, 2, "s" * 256, None, 1, None]]),
        _payload(i=[[1, 2, "s", "a" * 33, 1, None]]),
        _payload(i=[[1, 2, "s", "", 1, None]]),
        _payload(i=[[1, 2, "s\x00", None, 1, None]]),
        _payload(i=[[1, 2, "s", None, 2, None]]),
        _payload(i=[[1, 2, "s", None, 1, -5]]),
        _payload(i=[[1, 2, "s", None, 1]]),
    ],
)
def test_anything_else_on_the_channel_is_refused(payload: str) -> None:
    with pytest.raises(PayloadError):
        decode(payload)


# --- replicas ---------------------------------------------------------------------------------


class Actions:
    """Stores actions as Proca does and returns the Increment that reports each one."""

    def __init__(self, db: ProcaData, rng: random.Random, campaigns: int = 2) -> None:
        self.db = db
        self.rng = rng
        self.pages: list[tuple[int, int, int]] = []  # (campaign, page, org)
        # campaign → its supporters: (supporter, page, org, area)
        self.people: dict[int, list[tuple[int, int, int, str | None]]] = {}
        self._fingerprints = itertools.count()
        orgs = [db.org(f"org{n}") for n in range(2)]
        for _ in range(campaigns):
            campaign = db.campaign(orgs[0])
            self.people[campaign] = []
            self.pages += [(campaign, db.page(campaign, org), org) for org in orgs]
        for _ in range(10):  # some figures before any replica starts
            self.next()

    def next(self) -> Increment:
        """One more stored action: a new supporter's, or one of a known supporter."""
        campaign, page, org = self.rng.choice(self.pages)
        action_type = self.rng.choice(["signature", "share"])
        known = self.people[campaign]
        if known and self.rng.random() < 0.4:
            supporter, page, org, area = self.rng.choice(known)
            action = self.db.action(campaign, page, supporter, action_type=action_type)
            return Increment(campaign, org, action_type, area, False, action)
        area = self.rng.choice([None, "DE", "FR"])
        fingerprint = f"person{next(self._fingerprints)}".encode()
        supporter = self.db.supporter(campaign, page, fingerprint, area=area)
        known.append((supporter, page, org, area))
        action = self.db.action(campaign, page, supporter, action_type=action_type)
        return Increment(campaign, org, action_type, area, True, action)


def truth(database_url: str) -> dict[int, CampaignCounters]:
    """What a single server holds after a full calculation."""
    with psycopg.connect(database_url) as conn:
        return calculate(conn).campaigns


def send(clients: list[StatsClient], inc: Increment, rng: random.Random, with_id: bool) -> None:
    """Tell one replica, at random; with an action id, sometimes retry at another at random."""
    tries = 2 if with_id and rng.random() < 0.3 else 1
    for _ in range(tries):
        rng.choice(clients).increment(
            inc.campaign_id,
            inc.org_id,
            inc.action_type,
            area=inc.area,
            new_supporter=inc.new_supporter,
            action_id=inc.action_id if with_id else None,
        )


def agree(clients: list[StatsClient], expected: dict[int, CampaignCounters]) -> bool:
    """Every replica answers exactly ``expected`` for every campaign."""
    return all(
        figures(client.get_stats(campaign)) == counters
        for client in clients
        for campaign, counters in expected.items()
    )


class Replicas:
    """`proca-stats serve --fanout` processes on one database, and a client of each.

    Each keeps its state file in a folder of its own, as replicas on hosts of their own do:
    in one shared folder a replica would start warm from the file another wrote, SERVING
    before its first calculation, and with --sync-interval 0 that calculation's snapshot
    would replace for good the Increments without an action id that arrive meanwhile (the
    handover's rule, which only a later calculation corrects)."""

    def __init__(self, serve: Serve, database_url: str, clients: ExitStack, state: Path) -> None:
        self.ports: list[int] = []
        self._serve = serve
        self._url = database_url
        self._clients = clients
        self._state = state

    def start(self, count: int) -> list[StatsClient]:
        """Start ``count`` more, wait until they listen, return their clients."""
        ports = [
            self._serve(
                "--database-url", self._url, *REPLICA,
                "--state-dir", str(self._state / f"replica-{len(self.ports) + n}"),
            )[1]
            for n in range(count)
        ]  # fmt: skip
        self.ports += ports
        self.wait_listening()
        return [self._clients.enter_context(StatsClient(f"127.0.0.1:{p}")) for p in ports]

    def wait_listening(self) -> None:
        wait_for(lambda: all(map(fanout_serving, self.ports)), what="the replicas to listen")


@pytest.fixture
def replicas(serve: Serve, database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    with ExitStack() as clients:
        yield Replicas(serve, database_url, clients, tmp_path)


def test_three_replicas_answer_what_one_server_would_within_a_second(
    replicas: Replicas, db: ProcaData, database_url: str
) -> None:
    """No calculation runs after the start (--sync-interval 0): only fan-out can make the
    replicas agree. Timed from the return of the last Increment. The second is a margin,
    not a figure of the contract, which says "within milliseconds" and leaves the tail to
    how busy the machine is: it is several times the worst delay bench/fanout.py measures
    with a replica under full load, and short enough that a slow path in fan-out fails."""
    rng = random.Random(6)
    actions = Actions(db, rng)
    clients = replicas.start(3)
    one_server = truth(database_url)
    for n in range(300):
        inc = actions.next()
        one_server[inc.campaign_id] = incremented(one_server[inc.campaign_id], inc)
        send(clients, inc, rng, with_id=n % 2 == 0)
    sent = time.monotonic()
    wait_for(lambda: agree(clients, one_server), 1.0, "the replicas to agree", since=sent)
    assert one_server == truth(database_url)  # the load is what the database holds


class Load:
    """Stores actions and sends their Increments (with ids, retries included) until stopped."""

    def __init__(self, actions: Actions, clients: list[StatsClient]) -> None:
        self.sent = 0
        self.errors: list[Exception] = []
        self._actions = actions
        self._clients = clients
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                send(self._clients, self._actions.next(), self._actions.rng, with_id=True)
                self.sent += 1
            except Exception as error:
                self.errors.append(error)
                return

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def listeners(database_url: str) -> set[int]:
    """The backend pids of this database's fan-out listeners (the cluster may be shared)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            (LISTENER_NAME,),
        ).fetchall()
    return {pid for (pid,) in rows}


def test_killed_listeners_reconnect_under_load_and_converge(
    replicas: Replicas, db: ProcaData, database_url: str
) -> None:
    """With --sync-interval 0, only the refresh after reconnecting can bring back what the
    replicas missed while they were not listening.

    Timed from the end of the load. The five seconds are a margin, not a figure of the
    contract: what is checked is that the replicas converge without a sync, and a refresh
    of this small database plus the last batches' fan-out take milliseconds."""
    actions = Actions(db, random.Random(7))
    clients = replicas.start(3)
    with Load(actions, clients) as load:
        wait_for(lambda: load.sent >= 50 or load.errors, what="load before the kill")
        killed = listeners(database_url)
        assert len(killed) == 3
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (list(killed),)
            )
        wait_for(lambda: len(listeners(database_url) - killed) == 3, what="new listeners")
        replicas.wait_listening()
        recovered = load.sent
        wait_for(lambda: load.sent >= recovered + 50 or load.errors, what="load after the kill")
    stopped = time.monotonic()  # the load's last Increment has returned
    assert not load.errors
    expected = truth(database_url)
    wait_for(lambda: agree(clients, expected), 5.0, "the replicas to converge", since=stopped)


def test_a_replica_started_late_converges(
    replicas: Replicas, db: ProcaData, database_url: str
) -> None:
    """What it missed, its first calculation counts; what came after, fan-out brings.
    Timed from the return of the last Increment, with the same margin of a second as
    three replicas that agree."""
    rng = random.Random(8)
    actions = Actions(db, rng)
    early = replicas.start(2)
    for n in range(100):
        send(early, actions.next(), rng, with_id=n % 3 == 0)
    clients = early + replicas.start(1)
    for n in range(100):
        send(clients, actions.next(), rng, with_id=n % 3 == 0)
    sent = time.monotonic()
    expected = truth(database_url)
    wait_for(lambda: agree(clients, expected), 1.0, "the late replica to agree", since=sent)


# --- one process, two replicas: what the metrics and health say ---------------------------------


def test_a_replica_applies_the_others_increments_and_never_its_own_twice(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    a, b = (start_server(database_url, fanout=True) for _ in range(2))
    for server in (a, b):
        # After the first calculation, which would replace Increments of actions not stored.
        wait_for(lambda s=server: s.store.synced_at, what="the first calculation")
        wait_for(lambda s=server: sample(s, "proca_stats_fanout_connected") == 1, what="listening")
    with StatsClient(f"127.0.0.1:{a.port}") as to_a, StatsClient(f"127.0.0.1:{b.port}") as to_b:
        to_a.increment(1, 2, "signature", area="DE", new_supporter=True, action_id=10)
        wait_for(lambda: b.store.get(1)[0].supporters == 1, what="b to hear a")
        to_b.increment(1, 2, "signature", area="DE", new_supporter=True, action_id=10)  # a retry
        to_b.increment(1, 3, "share")
        # NOTIFYs reach a listener in commit order: once a has b's, it has had its own.
        wait_for(lambda: "share" in a.store.get(1)[0].actions_by_type, what="a to hear b")
    expected = CampaignCounters(1, {"signature": 1, "share": 1}, {"DE": 1}, {2: 1, 3: 0})
    assert a.store.get(1)[0] == b.store.get(1)[0] == expected
    # A sender counts a batch as published after its NOTIFY has committed, a listener a
    # delivery after applying the batch: both may trail what the other's store shows. A
    # listener counts what it received before applying it, so once each store shows the
    # other's Increments, the sender's count must come up to it (a published retry too).
    wait_for(
        lambda: all(
            sample(sender, "proca_stats_fanout_published_total")
            == sample(receiver, "proca_stats_fanout_received_total")
            and sample(receiver, "proca_stats_fanout_delivery_seconds_count") >= 1
            for sender, receiver in ((a, b), (b, a))
        ),
        what="the fan-out metrics to count what the stores show",
    )
    for server in (a, b):
        assert sample(server, "proca_stats_fanout_published_total") == 1  # the retry was not
        assert sample(server, "proca_stats_fanout_received_total") == 1
        assert sample(server, "proca_stats_fanout_delivery_seconds_count") == 1
        assert sample(server, "proca_stats_fanout_dropped_total") == 0


def test_sync_reads_the_sync_database_and_fanout_uses_the_primary(
    start_server: Callable[..., StatsServer],
    database_url: str,
    create_database: Callable[[], str],
) -> None:
    replica_url = create_database()  # stands for a read replica: it holds one person
    init_schema(replica_url)
    with psycopg.connect(replica_url, autocommit=True) as conn:
        data = ProcaData(conn)
        org = data.org()
        campaign = data.campaign(org)
        data.person(campaign, data.page(campaign, org), b"alice")
    a, b = (
        start_server(database_url, fanout=True, sync_database_url=replica_url) for _ in range(2)
    )
    for server in (a, b):
        wait_for(lambda s=server: s.store.synced_at, what="the first calculation")
        assert server.store.get(campaign)[0].supporters == 1
    wait_for(lambda: listeners(database_url) and len(listeners(database_url)) == 2, what="LISTEN")
    assert not listeners(replica_url)
    with StatsClient(f"127.0.0.1:{a.port}") as to_a:
        to_a.increment(campaign, org, "signature", new_supporter=True)
    wait_for(lambda: b.store.get(campaign)[0].supporters == 2, what="b to hear a")


def test_a_batch_larger_than_one_notify_arrives_whole(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    listening = start_server(database_url, fanout=True)
    wait_for(lambda: listening.store.synced_at, what="the first calculation")
    wait_for(lambda: sample(listening, "proca_stats_fanout_connected") == 1, what="listening")
    batch = [Increment(7, 1, f"{n:03}" + "x" * 252, None, True) for n in range(100)]
    assert len(encode("bulk", 0, 0.0, batch)) > 3  # several NOTIFYs
    registry = CollectorRegistry()
    publisher = Publisher(
        lambda name: psycopg.connect(database_url, autocommit=True, application_name=name),
        ServeConfig().fanout_channel,
        "bulk",
        FanoutMetrics(registry),
    )
    for inc in batch:  # all queued before the thread starts: one batch
        publisher.publish(inc)
    publisher.start()
    publisher.stop()
    assert registry.get_sample_value("proca_stats_fanout_published_total") == len(batch)
    wait_for(lambda: listening.store.get(7)[0].supporters == len(batch), what="the whole batch")
    assert set(listening.store.get(7)[0].actions_by_type) == {inc.action_type for inc in batch}
    assert sample(listening, "proca_stats_fanout_received_total") == len(batch)
