"""Random and malformed requests thrown at a live server: it answers only expected statuses,
and no figure changes except by a legitimate Increment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca_stats.client.v1 import stats_pb2
from proca_stats.server.app import StatsServer
from proca_stats.server.auth import load_tokens
from proca_stats.server.config import Limits
from proca_stats.server.counters import CampaignCounters, Increment, incremented
from tests.conftest import figures, wait_for
from tests.proca_data import ProcaData

TOKEN = "fuzz-token"
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
INCREMENT = "/proca.stats.v1.StatsService/Increment"
GET_STATS = "/proca.stats.v1.StatsService/GetStats"

int64 = st.integers(-(2**63), 2**63 - 1)
# Campaigns 1 and 2 come from the database and must never change: no call names them.
ids = st.one_of(st.integers(3, 12), int64).filter(lambda campaign_id: campaign_id not in (1, 2))
texts = st.one_of(
    st.sampled_from(["signature", "share", "", "x" * 255, "x" * 256, "a\x00b"]),
    st.text(max_size=300),
)


@dataclass(frozen=True)
class Call:
    method: str
    body: bytes
    token: str | None
    increment: stats_pb2.IncrementRequest | None = None  # set for well-formed Increments


increments = st.builds(
    lambda cid, org, kind, area, new, token: Call(
        INCREMENT,
        b"",
        token,
        stats_pb2.IncrementRequest(
            campaign_id=cid, org_id=org, action_type=kind, area=area, new_supporter=new
        ),
    ),
    ids,
    st.one_of(st.integers(1, 4), int64),
    texts,
    st.one_of(st.none(), st.sampled_from(["DE", "FR", ""]), st.text(max_size=40)),
    st.booleans(),
    st.sampled_from([TOKEN, None, "guess"]),
)
raw_calls = st.builds(
    Call,
    st.sampled_from([INCREMENT, GET_STATS]),
    st.binary(max_size=300),
    st.sampled_from([TOKEN, None]),
)
reads = st.builds(
    lambda cid: Call(
        GET_STATS, stats_pb2.GetStatsRequest(campaign_id=cid).SerializeToString(), None
    ),
    ids,
)


@pytest.fixture
def fuzzed(
    start_server: Callable[..., StatsServer], database_url: str, db: ProcaData, tmp_path: Path
) -> StatsServer:
    for name in ("first", "second"):
        org = db.org(name)
        campaign = db.campaign(org)
        page = db.page(campaign, org, extra_supporters=5)
        db.person(campaign, page, f"{name}-person".encode(), area="DE")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = start_server(
        database_url,
        tokens=load_tokens(tokens),
        limits=Limits(max_campaigns=8, max_keys_per_map=6, max_request_bytes=512),
    )
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    return server


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(calls=st.lists(st.one_of(increments, raw_calls, reads), min_size=1, max_size=6))
def test_hostile_requests_never_break_the_server(fuzzed: StatsServer, calls: list[Call]) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{fuzzed.port}") as channel:
        raw = {m: channel.unary_unary(m) for m in (INCREMENT, GET_STATS)}
        stub_get = channel.unary_unary(
            GET_STATS,
            request_serializer=stats_pb2.GetStatsRequest.SerializeToString,
            response_deserializer=stats_pb2.GetStatsResponse.FromString,
        )

        def read(campaign_id: int) -> CampaignCounters:
            return figures(stub_get(stats_pb2.GetStatsRequest(campaign_id=campaign_id)).stats)

        untouchable = {1: read(1), 2: read(2)}
        for call in calls:
            body = call.increment.SerializeToString() if call.increment else call.body
            target = call.increment.campaign_id if call.increment else 0
            before = read(target) if target > 0 else None
            metadata = (("authorization", f"Bearer {call.token}"),) if call.token else None
            try:
                raw[call.method](body, timeout=10, metadata=metadata)
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            assert code in ALLOWED, (call, code)
            if before is not None and call.increment is not None:
                expected = before
                if code == grpc.StatusCode.OK:
                    inc = call.increment
                    expected = incremented(
                        before,
                        Increment(
                            inc.campaign_id,
                            inc.org_id,
                            inc.action_type,
                            inc.area or None,
                            inc.new_supporter,
                        ),
                    )
                assert read(target) == expected, (call, code)
        assert {1: read(1), 2: read(2)} == untouchable
