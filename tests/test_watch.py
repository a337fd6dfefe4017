"""WatchStats over real streams: first message, changes, coalescing, the cap, cancel, shutdown."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import pytest

from proca_stats.client import InvalidArgument, ResourceExhausted, StatsClient, Unavailable
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.app import StatsServer
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for
from tests.support.watching import Recorder

Watching = Callable[..., Recorder]


@pytest.fixture
def watching(client: StatsClient) -> Iterator[Watching]:
    """Opens recorded watches on the test's server; each is cancelled after the test."""
    recorders: list[Recorder] = []

    def watch(campaign_id: int, **options: int) -> Recorder:
        recorder = Recorder(client.watch_stats(campaign_id, **options))
        recorders.append(recorder)
        return recorder

    yield watch
    for recorder in recorders:
        recorder.close()


def test_sends_the_current_figures_at_once(client: StatsClient, watching: Watching) -> None:
    client.increment(5, 2, "signature", area="DE", new_supporter=True)
    first = watching(5).wait_for_count(1)[0]
    assert first == client.get_stats(5)


def test_unknown_campaign_starts_at_zero(watching: Watching) -> None:
    first = watching(404).wait_for_count(1)[0]
    assert (first.campaign_id, first.supporters) == (404, 0)
    assert first.HasField("synced_at")


def test_sends_a_message_after_an_increment(client: StatsClient, watching: Watching) -> None:
    recorder = watching(5, min_interval_ms=100)
    recorder.wait_for_count(1)
    client.increment(5, 2, "signature", new_supporter=True)
    recorder.arrival(lambda s: s.supporters == 1, "the incremented figures")
    assert recorder.messages[-1] == client.get_stats(5)


def test_other_campaigns_changes_send_nothing(client: StatsClient, watching: Watching) -> None:
    recorder = watching(5, min_interval_ms=100)
    recorder.wait_for_count(1)
    client.increment(6, 2, "signature", new_supporter=True)
    client.increment(5, 2, "share")
    recorder.arrival(lambda s: s.actions_by_type["share"] == 1, "campaign 5's change")
    assert [m.actions_by_type["share"] for m in recorder.messages] == [0, 1]


def test_sends_a_message_after_a_sync_that_changed_the_figures(
    db: ProcaData, server: StatsServer, watching: Watching
) -> None:
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    resync(server)
    recorder = watching(campaign, min_interval_ms=100)
    recorder.wait_for_count(1)
    db.person(campaign, page, b"alice", area="DE")
    resync(server)
    recorder.arrival(lambda s: s.supporters == 1, "the recalculated figures")
    first, changed = recorder.messages
    assert dict(changed.supporters_by_area) == {"DE": 1}
    assert changed.synced_at.ToDatetime() > first.synced_at.ToDatetime()


def test_a_sync_that_confirms_the_figures_sends_nothing(
    client: StatsClient, server: StatsServer, watching: Watching
) -> None:
    recorder = watching(5, min_interval_ms=100)
    recorder.wait_for_count(1)
    resync(server)  # campaign 5 has no rows: still zeros
    client.increment(5, 2, "share")
    recorder.arrival(lambda s: s.actions_by_type["share"] == 1, "the increment")
    assert len(recorder.messages) == 2


def test_changes_are_coalesced_to_one_message_per_interval(
    client: StatsClient, watching: Watching
) -> None:
    opened_at = time.monotonic()
    recorder = watching(5, min_interval_ms=400)
    recorder.wait_for_count(1)
    done = threading.Event()
    increments: list[int] = []

    def increment_for_a_while() -> None:
        count = 0
        while not done.is_set() or count < 100:
            client.increment(5, 2, "signature", new_supporter=True)
            count += 1
        increments.append(count)

    worker = threading.Thread(target=increment_for_a_while)
    worker.start()
    recorder.arrival(lambda s: s.supporters > 0, "a second message")
    recorder.wait_for_count(4)
    done.set()
    worker.join()
    last_at = recorder.arrival(lambda s: s.supporters == increments[0], "every increment")
    # Hundreds of changes, yet one message per 400 ms at most. Checked as a count:
    # the server prepared the first message after `opened_at` and each next one
    # at least 400 ms after the one before, so however late messages arrive,
    # n messages take at least (n - 1) * 400 ms from `opened_at` to the last.
    assert len(recorder.received) <= 1 + (last_at - opened_at) / 0.4
    assert increments[0] >= 100
    assert len(recorder.received) < increments[0] / 10


@pytest.mark.parametrize(
    ("request_fields", "details"),
    [
        ({"campaign_id": 0}, "campaign_id: must be > 0, got 0"),
        ({"campaign_id": -3}, "campaign_id: must be > 0, got -3"),
        ({"campaign_id": 1, "min_interval_ms": 1}, "min_interval_ms: must be 0 (default 1000)"),
        ({"campaign_id": 1, "min_interval_ms": 99}, ">= 100, got 99"),
        ({"campaign_id": 1, "min_interval_ms": -100}, "min_interval_ms: must be 0"),
    ],
)
def test_bad_watch_is_refused(
    server: StatsServer,
    stub: stats_pb2_grpc.StatsServiceStub,
    request_fields: dict[str, int],
    details: str,
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        next(stub.WatchStats(stats_pb2.WatchStatsRequest(**request_fields), timeout=10))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in refused.value.details()
    assert len(server.watchers) == 0


def test_the_python_client_raises_invalid_argument(client: StatsClient) -> None:
    with (
        pytest.raises(InvalidArgument, match="min_interval_ms"),
        client.watch_stats(1, min_interval_ms=50) as watch,
    ):
        next(watch)


def test_the_minimum_interval_itself_is_accepted(watching: Watching) -> None:
    assert watching(1, min_interval_ms=100).wait_for_count(1)[0].campaign_id == 1


def test_unavailable_before_the_first_calculation(
    start_server: Callable[..., StatsServer], create_database: Callable[[], str]
) -> None:
    server = start_server(create_database())  # no schema: the calculation keeps failing
    with (
        StatsClient(f"127.0.0.1:{server.port}") as client,
        client.watch_stats(1) as watch,
        pytest.raises(Unavailable, match="not ready"),
    ):
        next(watch)
    assert len(server.watchers) == 0


def test_the_cap_refuses_more_watchers_and_unary_calls_still_run(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_server(database_url, max_watchers=3, workers=2)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        recorders = [Recorder(client.watch_stats(n)) for n in (1, 1, 2)]
        for recorder in recorders:
            recorder.wait_for_count(1)
        assert len(server.watchers) == 3
        with pytest.raises(ResourceExhausted, match="3 watchers"), client.watch_stats(3) as extra:
            next(extra)
        # The watchers hold three threads; the two unary workers still answer, many times.
        for n in range(20):
            client.increment(1, 2, "signature", new_supporter=True)
            assert client.get_stats(1).supporters == n + 1
        assert client.batch_get_stats([1, 2]) == [client.get_stats(1), client.get_stats(2)]

        recorders[0].close()  # a client that cancels frees its place at once
        wait_for(lambda: len(server.watchers) == 2, what="the cancelled watcher's place")
        replacement = Recorder(client.watch_stats(3))
        assert replacement.wait_for_count(1)[0].campaign_id == 3
        for recorder in [*recorders[1:], replacement]:
            recorder.close()
        wait_for(lambda: len(server.watchers) == 0, what="every place to be free")


WATCH_AND_HANG = """
import sys
from proca_stats.client import StatsClient
watch = StatsClient(sys.argv[1]).watch_stats(1)
print(next(watch).campaign_id, flush=True)
sys.stdin.read()
"""


def test_a_vanished_client_is_dropped(server: StatsServer, client: StatsClient) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", WATCH_AND_HANG, f"127.0.0.1:{server.port}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "1"
        assert len(server.watchers) == 1
        process.kill()  # no goodbye: the connection just breaks
        process.wait(timeout=30)
        wait_for(lambda: len(server.watchers) == 0, what="the vanished watcher to be dropped")
        client.increment(1, 2, "signature")  # notifying nobody is fine
        assert client.get_stats(1).actions_by_type["signature"] == 1
    finally:
        process.kill()
        process.communicate()


def test_shutdown_ends_every_stream_cleanly(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_server(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        recorders = [Recorder(client.watch_stats(n)) for n in range(1, 6)]
        for recorder in recorders:
            recorder.wait_for_count(1)
        # A generous grace: stop() returns long before it only if the streams
        # end by themselves rather than being cancelled when it runs out.
        stopper = threading.Thread(target=server.stop, kwargs={"grace": 120})
        stopper.start()
        for recorder in recorders:
            recorder.wait_ended()
            assert recorder.error is None  # status OK, not CANCELLED or UNAVAILABLE
        wait_for(lambda: not stopper.is_alive(), what="stop() to return")
        assert len(server.watchers) == 0
