"""BatchGetStats: one entry per requested id in the request's order, from one snapshot."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from proca_stats.client import InvalidArgument, StatsClient, Unavailable
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.app import StatsServer
from proca_stats.server.state.validation import MAX_BATCH_IDS


def test_answers_in_request_order_with_duplicates(client: StatsClient) -> None:
    client.increment(1, 2, "signature", area="DE", new_supporter=True)
    client.increment(3, 2, "signature", new_supporter=True)
    client.increment(3, 4, "share", new_supporter=True)
    ids = [3, 404, 1, 3, 1]
    answered = client.batch_get_stats(ids)
    assert [stats.campaign_id for stats in answered] == ids
    assert [stats.supporters for stats in answered] == [2, 0, 1, 2, 1]
    assert answered == [client.get_stats(cid) for cid in ids]
    assert len({stats.synced_at.ToDatetime() for stats in answered}) == 1


def test_the_limit_itself_is_accepted(client: StatsClient) -> None:
    ids = [n % 7 + 1 for n in range(MAX_BATCH_IDS)]
    assert [stats.campaign_id for stats in client.batch_get_stats(ids)] == ids


@pytest.mark.parametrize(
    ("ids", "details"),
    [
        ([], "campaign_ids: must hold 1..1000 ids, got 0"),
        ([1] * (MAX_BATCH_IDS + 1), "campaign_ids: must hold 1..1000 ids, got 1001"),
        ([0], "campaign_ids[0]: must be > 0, got 0"),
        ([1, 2, 3, -4, 0], "campaign_ids[3]: must be > 0, got -4"),
        ([1, -(2**63)], f"campaign_ids[1]: must be > 0, got {-(2**63)}"),
    ],
)
def test_bad_batch_is_refused_and_changes_nothing(
    server: StatsServer, stub: stats_pb2_grpc.StatsServiceStub, ids: list[int], details: str
) -> None:
    campaigns_before = len(server.store)
    with pytest.raises(grpc.RpcError) as refused:
        stub.BatchGetStats(stats_pb2.BatchGetStatsRequest(campaign_ids=ids))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == details
    assert len(server.store) == campaigns_before


def test_the_python_client_raises_invalid_argument(client: StatsClient) -> None:
    with pytest.raises(InvalidArgument, match=r"campaign_ids\[1\]"):
        client.batch_get_stats([1, 0])


def test_unavailable_before_the_first_calculation(
    start_server: Callable[..., StatsServer], create_database: Callable[[], str]
) -> None:
    server = start_server(create_database())  # no schema: the calculation keeps failing
    with StatsClient(f"127.0.0.1:{server.port}") as client, pytest.raises(Unavailable):
        client.batch_get_stats([1])
