"""The Python client's retries, through a proxy that loses the answers of real calls to a real
server: reads and Increments that carry an action_id are tried again on UNAVAILABLE, as its
``Retry`` says; an Increment without one goes out once, since its lost attempt counted."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator

import pytest

from proca_stats.client import Retry, StatsClient, Unavailable
from proca_stats.server.app import StatsServer
from tests.support.lossy_proxy import LossyProxy

Proxy = Callable[..., LossyProxy]


@pytest.fixture
def lossy(server: StatsServer) -> Iterator[Proxy]:
    """Opens proxies in front of the test's server that lose the first ``lose`` answers."""
    opened: list[LossyProxy] = []

    def open_proxy(lose: int = 1) -> LossyProxy:
        opened.append(LossyProxy(server.port, lose))
        return opened[-1]

    yield open_proxy
    for proxy in opened:
        proxy.close()


def supporters(server: StatsServer, campaign_id: int) -> int:
    return server.store.get(campaign_id)[0].supporters


def test_an_increment_without_action_id_goes_out_once(server: StatsServer, lossy: Proxy) -> None:
    proxy = lossy()
    with StatsClient(f"127.0.0.1:{proxy.port}") as client, pytest.raises(Unavailable):
        client.increment(1, 2, "signature", new_supporter=True)
    assert proxy.calls == 1
    assert supporters(server, 1) == 1  # it reached the server: a retry would have counted twice


def test_an_increment_with_an_action_id_is_retried_and_counts_once(
    server: StatsServer, lossy: Proxy
) -> None:
    proxy = lossy()
    with StatsClient(f"127.0.0.1:{proxy.port}") as client:
        # The lost attempt counted it; the retry is told so.
        assert client.increment(1, 2, "signature", new_supporter=True, action_id=7) is False
        assert client.increment(1, 2, "signature", new_supporter=True, action_id=8) is True
    assert proxy.calls == 3
    assert supporters(server, 1) == 2


def test_reads_are_retried(server: StatsServer, lossy: Proxy) -> None:
    proxy = lossy(lose=3)
    with StatsClient(f"127.0.0.1:{proxy.port}") as client:
        assert client.get_stats(4).campaign_id == 4
        assert [s.campaign_id for s in client.batch_get_stats([4, 5])] == [4, 5]
        with client.watch_stats(4) as watch:
            assert next(watch).campaign_id == 4
    assert proxy.calls == 6


# Calls that the client may retry. Each test makes one on a client of its own: a call made
# at once after another one's connection was cut may go out on that dead connection and fail
# before it reaches the proxy.
RETRIED: dict[str, Callable[[StatsClient], object]] = {
    "GetStats": lambda client: client.get_stats(1),
    "BatchGetStats": lambda client: client.batch_get_stats([1]),
    "WatchStats": lambda client: next(client.watch_stats(1)),
    "Increment with action_id": lambda client: client.increment(1, 2, "x", action_id=3),
}


@pytest.mark.parametrize("call", RETRIED.values(), ids=RETRIED.keys())
@pytest.mark.parametrize(("retry", "attempts"), [(None, 1), (Retry(max_attempts=3), 3)])
def test_attempts_follow_the_policy_given(
    lossy: Proxy, call: Callable[[StatsClient], object], retry: Retry | None, attempts: int
) -> None:
    proxy = lossy(lose=10)
    with (
        StatsClient(f"127.0.0.1:{proxy.port}", retry=retry) as client,
        pytest.raises(Unavailable),
    ):
        call(client)
    assert proxy.calls == attempts


def test_the_service_config_names_the_retried_methods() -> None:
    config = json.loads(Retry(max_attempts=5, initial_backoff=0.25).service_config())
    (method,) = config["methodConfig"]
    names = {(n["service"], n["method"]) for n in method["name"]}
    assert names == {
        ("proca.stats.v1.StatsService", m)
        for m in ("GetStats", "BatchGetStats", "WatchStats", "Increment")
    }
    assert method["retryPolicy"] == {
        "maxAttempts": 5,
        "initialBackoff": "0.25s",
        "maxBackoff": "2s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_attempts": 1}, "max_attempts: must be 2..5, got 1"),
        ({"max_attempts": 6}, "max_attempts: must be 2..5, got 6"),
        ({"initial_backoff": 0}, "initial_backoff: must be a finite number > 0"),
        ({"max_backoff": math.inf}, "max_backoff: must be a finite number > 0"),
        ({"backoff_multiplier": math.nan}, "backoff_multiplier: must be a finite number > 0"),
    ],
)
def test_a_policy_gRPC_would_not_take_is_refused(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Retry(**settings)  # type: ignore[arg-type]
