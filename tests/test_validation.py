"""Bad input (the proto's rules): INVALID_ARGUMENT naming the field, and the counters unchanged."""

from __future__ import annotations

import grpc
import pytest

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.app import StatsServer

GOOD = {"campaign_id": 1, "org_id": 2, "action_type": "signature", "new_supporter": True}


def stats_of(stub: stats_pb2_grpc.StatsServiceStub, campaign_id: int) -> bytes:
    return stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=campaign_id)).SerializeToString()


@pytest.fixture
def counted_stub(
    server: StatsServer, stub: stats_pb2_grpc.StatsServiceStub
) -> stats_pb2_grpc.StatsServiceStub:
    """A stub on a server that already counted one action in campaign 1."""
    stub.Increment(stats_pb2.IncrementRequest(**GOOD, area="DE"))
    return stub


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"campaign_id": 0}, "campaign_id", "must be > 0, got 0"),
        ({"campaign_id": -1}, "campaign_id", "must be > 0, got -1"),
        ({"org_id": 0}, "org_id", "must be > 0, got 0"),
        ({"org_id": -9}, "org_id", "must be > 0, got -9"),
        ({"action_type": ""}, "action_type", "must be 1..255 characters, got 0"),
        ({"action_type": "x" * 256}, "action_type", "must be 1..255 characters, got 256"),
        ({"action_type": "sign\x00ature"}, "action_type", "must not contain control characters"),
        (
            {"action_type": "sign\x01"},
            "action_type",
            "control characters, got U+0001 at character 4",
        ),
        ({"action_type": "a\nb"}, "action_type", "control characters, got U+000A at character 1"),
        ({"action_type": "\x7f"}, "action_type", "control characters, got U+007F"),
        ({"area": "x" * 33}, "area", "must be 0..32 characters, got 33"),
        ({"area": "D\x00"}, "area", "must not contain control characters, got U+0000"),
        (
            {"area": "\x01DE"},
            "area",
            "must not contain control characters, got U+0001 at character 0",
        ),
        ({"area": "DE\t"}, "area", "control characters, got U+0009"),
        ({"area": "D\x9f"}, "area", "control characters, got U+009F"),
        ({"action_id": 0}, "action_id", "must be > 0, got 0"),
        ({"action_id": -5}, "action_id", "must be > 0, got -5"),
    ],
)
def test_bad_increment_is_refused_and_changes_nothing(
    server: StatsServer,
    counted_stub: stats_pb2_grpc.StatsServiceStub,
    changes: dict[str, object],
    field: str,
    rule: str,
) -> None:
    request = stats_pb2.IncrementRequest(**(GOOD | changes))  # type: ignore[arg-type]
    campaign_ids = {1, abs(request.campaign_id)}
    before = {cid: stats_of(counted_stub, cid) for cid in campaign_ids if cid > 0}
    campaigns_before = len(server.store)
    with pytest.raises(grpc.RpcError) as refused:
        counted_stub.Increment(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"{field}: ")
    assert rule in refused.value.details()
    assert {cid: stats_of(counted_stub, cid) for cid in before} == before
    assert len(server.store) == campaigns_before


@pytest.mark.parametrize("campaign_id", [0, -1, -(2**63)])
def test_bad_get_stats_is_refused(
    counted_stub: stats_pb2_grpc.StatsServiceStub, campaign_id: int
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        counted_stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=campaign_id))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"campaign_id: must be > 0, got {campaign_id}"


@pytest.mark.parametrize(
    "changes",
    [
        {"action_type": "x" * 255},
        {"action_type": "é" * 255},  # characters, not bytes
        {"area": "x" * 32},
        {"area": "ü" * 32},
        {"area": "\xa0"},  # no-break space: the first character past the control characters
        {"action_type": "sign ature \u200b"},
        {"campaign_id": 2**63 - 1, "org_id": 2**63 - 1},
        {"action_id": 1},
        {"action_id": 2**63 - 1},
    ],
)
def test_limits_themselves_are_accepted(
    counted_stub: stats_pb2_grpc.StatsServiceStub, changes: dict[str, object]
) -> None:
    request = stats_pb2.IncrementRequest(**(GOOD | changes))  # type: ignore[arg-type]
    counted_stub.Increment(request)
    stats = counted_stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=request.campaign_id)).stats
    assert stats.actions_by_type[request.action_type] >= 1
