"""Random and malformed HTTP requests thrown at a live HTTP port: only the statuses the
contract allows, never a 5xx, the server up, and no campaign's figures changed unless an
Increment was legitimately counted (checked against the gRPC port's model of the contract)."""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.app import StatsServer
from tests.support.figures import figures
from tests.support.proca_data import ProcaData
from tests.support.waiting import wait_for
from tests.support.web import SERVICE, port_of
from tests.test_hostile_input import LIMITS, TOKEN, WELL_FORMED, Call, Model

RPCS = ["Increment", "GetStats", "BatchGetStats", "WatchStats"]
HTTP_STATUS = {
    "OK": 200,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "RESOURCE_EXHAUSTED": 429,
}
ALLOWED = {200, 204, 304, 400, 401, 403, 404, 405, 408, 413, 415, 429, 431, 503}
CONTENT_TYPES = [
    "application/json",
    "application/proto",
    "application/connect+json",
    "application/grpc-web+proto",
    "application/grpc-web+json",
    "application/grpc",
    "application/grpc+proto",
    "text/plain",
    "",
]

paths = st.one_of(
    st.sampled_from([f"{SERVICE}/{rpc}" for rpc in RPCS] + ["/readyz", "/healthz", "/", "/x"]),
    st.text(alphabet="/abcdefgh.%?=&", max_size=40).map(lambda p: "/" + p),
)
bodies = st.one_of(
    st.binary(max_size=600),
    st.sampled_from(
        [b"{}", b'{"campaign_id": 1}', b'{"campaign_id": "x"}', b"[", b"{" * 5000, b"\xff\xfe"]
    ),
    st.just(b"x" * 70_000),
    st.builds(
        lambda m: json.dumps(m).encode(), st.dictionaries(st.text(max_size=12), st.integers())
    ),
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@pytest.fixture
def server(
    start_server: Callable[..., StatsServer], database_url: str, db: ProcaData, tmp_path: Path
) -> tuple[StatsServer, Model]:
    db.actions_out_of_reach()
    org = db.org("first")
    campaign = db.campaign(org)
    db.person(campaign, db.page(campaign, org), b"person", area="DE")
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    running = start_server(
        database_url,
        tokens=load_tokens(tmp_path / "tokens"),
        limits=LIMITS,
        http_listen="127.0.0.1:0",
        cors_origins=("http://127.0.0.1:8000",),
    )
    wait_for(lambda: running.store.synced_at, what="the first calculation")
    held, _ = running.store.get(campaign)
    return running, Model({campaign: held})


def send(server: StatsServer, method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=10)
    try:
        connection.request(method, path, body=body or None, headers=headers)
        response = connection.getresponse()
        if response.getheader("content-type", "").startswith("application/connect+"):
            response.read(5)  # a stream: its first frame is enough
        else:
            response.read()
        return response.status
    finally:
        connection.close()


def check_figures(server: StatsServer, model: Model) -> None:
    campaigns = sorted(model.campaigns)
    held = server.answers.batch_stats(stats_pb2.BatchGetStatsRequest(campaign_ids=campaigns))
    stats = stats_pb2.BatchGetStatsResponse.FromString(held.binary).stats
    assert {s.campaign_id: figures(s) for s in stats} == {c: model.figures(c) for c in campaigns}
    assert len(server.store) == len(model.campaigns)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "OPTIONS", "HEAD", "DELETE"]),
    path=paths,
    body=bodies,
    content_type=st.sampled_from(CONTENT_TYPES),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "origin",
                "authorization",
                "connect-timeout-ms",
                "content-encoding",
                "if-none-match",
                "connect-protocol-version",
                "x-junk",
            ]
        ),
        header_values,
        max_size=3,
    ),
)
def test_random_requests_get_allowed_statuses_and_change_nothing(
    server: tuple[StatsServer, Model],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    body: bytes,
    content_type: str,
    extra: dict[str, str],
) -> None:
    running, model = server
    caplog.clear()
    headers = ({"content-type": content_type} if content_type else {}) | extra
    status = send(running, method, path, body, headers)
    assert status in ALLOWED, (method, path, status)
    check_figures(running, model)  # none of these is an authorized, well-formed Increment
    assert send(running, "GET", "/healthz", b"", {}) == 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(request=WELL_FORMED[f"{SERVICE}/Increment"], token=st.sampled_from([TOKEN, None, "guess"]))
def test_increments_over_http_count_as_the_model_says(
    server: tuple[StatsServer, Model], request: stats_pb2.IncrementRequest, token: str | None
) -> None:
    running, model = server
    body = request.SerializeToString()
    headers = {"content-type": "application/proto"}
    status = send(running, "POST", f"{SERVICE}/Increment", body, headers | bearer(token))
    expected = model.call(Call(f"{SERVICE}/Increment", body, token)).name
    if token != TOKEN:  # the token is checked before the body is read (gRPC reads it first)
        expected = "UNAUTHENTICATED"
    assert status == HTTP_STATUS[expected], (request, token)
    check_figures(running, model)


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token else {}
