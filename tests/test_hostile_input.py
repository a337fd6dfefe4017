"""Random and malformed requests thrown at a live server, each answer checked against a model.

The model knows only the contract: the proto's rules, the token rule, the caps
(Limits) and protobuf's wire format. For every call it says which status the
server must answer and what every campaign's figures must be afterwards;
both are compared exactly, after every call. Calls go to every method of
every service the server registers (StatsService, health, reflection), as
well-formed messages or as any bytes, and none may make the server log an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.app import StatsServer
from proca_stats.server.state.counters import CampaignCounters, Increment, incremented
from proca_stats.server.state.limits import Limits
from tests.support.figures import figures
from tests.support.proca_data import ProcaData
from tests.support.waiting import wait_for

TOKEN = "fuzz-token"
LIMITS = Limits(max_campaigns=8, max_keys_per_map=3, max_request_bytes=512)
STATS = stats_pb2.DESCRIPTOR.services_by_name["StatsService"]
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
SERVICES = (STATS, HEALTH, REFLECTION)
METHODS = {f"/{s.full_name}/{m.name}": m for s in SERVICES for m in s.methods}
INCREMENT = f"/{STATS.full_name}/Increment"  # the one method that needs a token
HEALTH_CHECK = f"/{HEALTH.full_name}/Check"
HEALTHY = {"", STATS.full_name}  # the names the server reports SERVING for once synced
Code = grpc.StatusCode

int64 = st.integers(-(2**63), 2**63 - 1)
campaign_ids = st.one_of(st.integers(-1, 12), int64)
# 255 two-byte characters are within the rules but make a request over 512 bytes.
texts = st.one_of(
    st.sampled_from(["signature", "share", "", "x" * 255, "x" * 256, "a\x00b", "é" * 255]),
    st.text(max_size=300),
)
tokens = st.sampled_from([TOKEN, None, "guess"])
health_names = st.sampled_from(["", STATS.full_name, "unknown.Service"])
WELL_FORMED: dict[str, st.SearchStrategy[Message]] = {
    INCREMENT: st.builds(
        stats_pb2.IncrementRequest,
        campaign_id=campaign_ids,
        org_id=st.one_of(st.integers(-1, 4), int64),
        action_type=texts,
        area=st.one_of(st.none(), st.sampled_from(["DE", "FR", ""]), st.text(max_size=40)),
        new_supporter=st.booleans(),
        action_id=st.one_of(st.none(), st.integers(-1, 6), int64),
    ),
    f"/{STATS.full_name}/GetStats": st.builds(stats_pb2.GetStatsRequest, campaign_id=campaign_ids),
    f"/{STATS.full_name}/BatchGetStats": st.builds(
        stats_pb2.BatchGetStatsRequest, campaign_ids=st.lists(campaign_ids, max_size=5)
    ),
    f"/{STATS.full_name}/WatchStats": st.builds(
        stats_pb2.WatchStatsRequest,
        campaign_id=campaign_ids,
        min_interval_ms=st.sampled_from([0, -1, 99, 100, 5000]),
    ),
    HEALTH_CHECK: st.builds(health_pb2.HealthCheckRequest, service=health_names),
    f"/{HEALTH.full_name}/Watch": st.builds(health_pb2.HealthCheckRequest, service=health_names),
    f"/{HEALTH.full_name}/List": st.just(health_pb2.HealthListRequest()),
    f"/{REFLECTION.full_name}/ServerReflectionInfo": st.sampled_from(
        [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol=STATS.full_name),
            reflection_pb2.ServerReflectionRequest(file_by_filename="missing.proto"),
        ]
    ),
}


@dataclass(frozen=True)
class Call:
    method: str
    body: bytes
    token: str | None


well_formed_calls = st.sampled_from(sorted(METHODS)).flatmap(
    lambda method: st.builds(
        Call, st.just(method), WELL_FORMED[method].map(lambda m: m.SerializeToString()), tokens
    )
)
raw_calls = st.builds(Call, st.sampled_from(sorted(METHODS)), st.binary(max_size=300), tokens)
# Authorized Increments: over more campaigns and keys than the caps allow,
# with strings on either side of the rules and of the request size cap.
authorized_increments = st.builds(
    lambda request: Call(INCREMENT, request.SerializeToString(), TOKEN),
    st.builds(
        stats_pb2.IncrementRequest,
        campaign_id=st.integers(1, 12),
        org_id=st.integers(1, 8),
        action_type=st.sampled_from(
            [*(f"type-{n}" for n in range(8)), "", "x" * 255, "x" * 256, "a\x00b", "é" * 255]
        ),
        area=st.sampled_from(
            [None, *(f"area-{n}" for n in range(8)), "", "x" * 32, "x" * 33, "D\x00"]
        ),
        new_supporter=st.booleans(),
        action_id=st.one_of(st.none(), st.integers(1, 10_000)),
    ),
)


def decoded(method: str, body: bytes) -> Message | None:
    """The method's request message the bytes hold, None when they hold none (protobuf's rules)."""
    try:
        return GetMessageClass(METHODS[method].input_type).FromString(body)
    except DecodeError:
        return None


def fits(text: str, shortest: int, longest: int) -> bool:
    """The proto's length rule, in characters; control characters (Unicode's Cc: U+0000 to
    U+001F, U+007F to U+009F) are refused too."""
    return shortest <= len(text) <= longest and not any(
        ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text
    )


def breaks_a_rule(request: Message) -> bool:
    """Whether a request breaks a rule of the proto's comments."""
    match request:
        case stats_pb2.IncrementRequest():
            return (
                request.campaign_id <= 0
                or request.org_id <= 0
                or not fits(request.action_type, 1, 255)
                or not fits(request.area, 0, 32)
                or (request.HasField("action_id") and request.action_id <= 0)
            )
        case stats_pb2.GetStatsRequest():
            return request.campaign_id <= 0
        case stats_pb2.BatchGetStatsRequest():
            ids = request.campaign_ids
            return not 1 <= len(ids) <= 1000 or any(cid <= 0 for cid in ids)
        case stats_pb2.WatchStatsRequest():
            interval = request.min_interval_ms
            return request.campaign_id <= 0 or (interval != 0 and interval < 100)
    return False  # health and reflection requests have no rules of proca-stats


def named_campaigns(request: Message | None) -> list[int]:
    """The campaigns a request names, whatever becomes of it."""
    match request:
        case stats_pb2.BatchGetStatsRequest():
            return list(request.campaign_ids)
        case (
            stats_pb2.IncrementRequest()
            | stats_pb2.GetStatsRequest()
            | stats_pb2.WatchStatsRequest()
        ):
            return [request.campaign_id]
    return []


@dataclass
class Model:
    """What the server must hold: every campaign's figures and the action ids it counted."""

    campaigns: dict[int, CampaignCounters]
    counted_ids: set[int] = field(default_factory=set)

    def figures(self, campaign_id: int) -> CampaignCounters:
        return self.campaigns.get(campaign_id, CampaignCounters())

    def call(self, call: Call) -> Code:
        """The status the server must answer; the model counts what the server must count."""
        if len(call.body) > LIMITS.max_request_bytes:
            return Code.RESOURCE_EXHAUSTED
        if call.method == INCREMENT and call.token != TOKEN:
            return Code.UNAUTHENTICATED
        request = decoded(call.method, call.body)
        if request is None or breaks_a_rule(request):
            return Code.INVALID_ARGUMENT
        if isinstance(request, stats_pb2.IncrementRequest):
            return self.count(request)
        if isinstance(request, health_pb2.HealthCheckRequest) and call.method == HEALTH_CHECK:
            return Code.OK if request.service in HEALTHY else Code.NOT_FOUND
        return Code.OK

    def count(self, request: stats_pb2.IncrementRequest) -> Code:
        """docs/figures.md's Increment, at most once per action id, refused whole past a cap."""
        has_id = request.HasField("action_id")
        if has_id and request.action_id in self.counted_ids:
            return Code.OK  # a retry: answered, not counted again
        campaign_id = request.campaign_id
        if campaign_id not in self.campaigns and len(self.campaigns) >= LIMITS.max_campaigns:
            return Code.RESOURCE_EXHAUSTED
        current = self.figures(campaign_id)
        area = request.area or None
        keys: list[tuple[object, dict[str, int] | dict[int, int]]] = [
            (request.action_type, current.actions_by_type),
            (area, current.supporters_by_area),
            (request.org_id, current.supporters_by_org),
        ]
        for key, counts in keys:
            if key is not None and key not in counts and len(counts) >= LIMITS.max_keys_per_map:
                return Code.RESOURCE_EXHAUSTED
        self.campaigns[campaign_id] = incremented(
            current,
            Increment(
                campaign_id, request.org_id, request.action_type, area, request.new_supporter
            ),
        )
        if has_id:
            self.counted_ids.add(request.action_id)
        return Code.OK

    def check_answer(self, request: Message | None, answer: bytes | None) -> None:
        """An answered read holds the model's figures; health tells the model's status."""
        match request:
            case stats_pb2.GetStatsRequest() | stats_pb2.WatchStatsRequest():
                assert answer is not None
                stats = stats_pb2.GetStatsResponse.FromString(answer).stats
                assert stats.campaign_id == request.campaign_id
                assert figures(stats) == self.figures(request.campaign_id)
            case stats_pb2.BatchGetStatsRequest():
                assert answer is not None
                answered = stats_pb2.BatchGetStatsResponse.FromString(answer).stats
                assert [figures(s) for s in answered] == [
                    self.figures(cid) for cid in request.campaign_ids
                ]
            case health_pb2.HealthCheckRequest():
                assert answer is not None
                status = health_pb2.HealthCheckResponse.FromString(answer).status
                serving = request.service in HEALTHY
                assert status == (
                    health_pb2.HealthCheckResponse.SERVING
                    if serving
                    else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
                )
            case health_pb2.HealthListRequest():
                assert answer is not None
                listed = health_pb2.HealthListResponse.FromString(answer).statuses
                serving = health_pb2.HealthCheckResponse.SERVING
                assert {name: s.status for name, s in listed.items()} == dict.fromkeys(
                    HEALTHY, serving
                )


def send(channel: grpc.Channel, call: Call) -> tuple[Code, bytes | None]:
    """The call's status and its first answer, sent as bytes the way its method's kind needs."""
    method = METHODS[call.method]
    metadata = (("authorization", f"Bearer {call.token}"),) if call.token else None
    try:
        if method.client_streaming:
            answers = list(
                channel.stream_stream(call.method)(iter([call.body]), timeout=10, metadata=metadata)
            )
            return Code.OK, answers[0] if answers else None
        if method.server_streaming:
            stream = channel.unary_stream(call.method)(call.body, timeout=10, metadata=metadata)
            first = next(stream, None)
            stream.cancel()  # watches never end by themselves
            return Code.OK, first
        return Code.OK, channel.unary_unary(call.method)(call.body, timeout=10, metadata=metadata)
    except grpc.RpcError as error:
        return error.code(), None


@dataclass
class Fuzzed:
    server: StatsServer
    model: Model  # kept across examples, like the server's state


@pytest.fixture
def fuzzed(
    start_server: Callable[..., StatsServer], database_url: str, db: ProcaData, tmp_path: Path
) -> Fuzzed:
    campaigns = {}
    db.actions_out_of_reach()
    for name in ("first", "second"):
        org = db.org(name)
        campaign = db.campaign(org)
        page = db.page(campaign, org, extra_supporters=5)
        db.person(campaign, page, f"{name}-person".encode(), area="DE")
        # docs/figures.md: one supporter plus the page's 5 extra, in the total and for the org.
        campaigns[campaign] = CampaignCounters(6, {"signature": 1}, {"DE": 1}, {org: 6})
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    server = start_server(database_url, tokens=load_tokens(tokens), limits=LIMITS)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    return Fuzzed(server, Model(campaigns))


@pytest.fixture
def channel_to(fuzzed: Fuzzed) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{fuzzed.server.port}") as channel:
        yield channel


def test_the_fuzzed_services_are_all_the_server_serves(channel_to: grpc.Channel) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (answer,) = reflection_pb2_grpc.ServerReflectionStub(channel_to).ServerReflectionInfo(
        iter([request]), timeout=10
    )
    served = {service.name for service in answer.list_services_response.service}
    assert served == {service.full_name for service in SERVICES}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    calls=st.lists(
        st.one_of(well_formed_calls, raw_calls, authorized_increments), min_size=1, max_size=6
    )
)
def test_hostile_requests_get_the_models_answers(
    fuzzed: Fuzzed,
    channel_to: grpc.Channel,
    caplog: pytest.LogCaptureFixture,
    calls: list[Call],
) -> None:
    model = fuzzed.model
    read = stats_pb2_grpc.StatsServiceStub(channel_to).BatchGetStats
    caplog.clear()
    for call in calls:
        code, answer = send(channel_to, call)
        request = decoded(call.method, call.body)
        assert code == model.call(call), call
        if code == Code.OK:
            model.check_answer(request, answer)
        # Every campaign the server should hold, and those the call named, read at once.
        campaigns = sorted(set(model.campaigns) | {c for c in named_campaigns(request) if c > 0})
        held = read(stats_pb2.BatchGetStatsRequest(campaign_ids=campaigns), timeout=10).stats
        assert {s.campaign_id: figures(s) for s in held} == {
            cid: model.figures(cid) for cid in campaigns
        }, call
        assert len(fuzzed.server.store) == len(model.campaigns), call
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
