"""Calls on the HTTP port in the gRPC port's metrics: the same series, by method and gRPC's
code names, told apart by the protocol label; every call started once and ended once,
whoever answered it (the handlers, the token check, the front, connectrpc's own refusals)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.app import StatsServer
from tests.support.metrics import sample
from tests.support.waiting import wait_for
from tests.support.web import (
    SERVICE,
    async_stream,
    connect_stream,
    get_path,
    port_of,
    post_json,
    request,
    start_web,
)
from tests.test_observability import scrape

GET_STATS = "proca.stats.v1.StatsService/GetStats"
INCREMENT = "proca.stats.v1.StatsService/Increment"
WATCH = "proca.stats.v1.StatsService/WatchStats"
TOKEN = "metrics-token"
AUTHORIZED = {"authorization": f"Bearer {TOKEN}"}
INCREMENTED = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


@pytest.fixture
def web(start_server: Callable[..., StatsServer], database_url: str, tmp_path: Path) -> StatsServer:
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    return start_web(
        start_server,
        database_url,
        metrics_listen="127.0.0.1:0",
        tokens=load_tokens(tmp_path / "tokens"),
        cors_origins=("http://127.0.0.1:8000",),
    )


def answered(server: StatsServer, method: str, code: str, protocol: str) -> float:
    return sample(server, "proca_stats_rpcs_total", method=method, code=code, protocol=protocol)


def started(server: StatsServer, method: str, protocol: str) -> float:
    return sample(server, "proca_stats_rpcs_started_total", method=method, protocol=protocol)


def grpc_web(server: StatsServer, rpc: str, message: bytes) -> int:
    """A gRPC-Web call with a binary body; its grpc-status, from the trailers frame."""
    body = struct.pack(">BI", 0, len(message)) + message
    answer = request(
        server, "POST", f"{SERVICE}/{rpc}", body, {"content-type": "application/grpc-web+proto"}
    )
    assert answer.status == 200
    data = answer.body
    while data:
        flags, size = struct.unpack(">BI", data[:5])
        frame, data = data[5 : 5 + size], data[5 + size :]
        if flags & 0x80:
            trailers = dict(
                line.split(":", 1) for line in frame.decode().strip().split("\r\n") if line
            )
            return int(trailers["grpc-status"].strip())
    pytest.fail("no trailers in the gRPC-Web answer")


def test_answered_calls_are_counted_by_protocol_beside_grpc(web: StatsServer) -> None:
    assert post_json(web, "GetStats", {"campaign_id": 7}).status == 200
    got = request(web, "GET", get_path("GetStats", {"campaignId": 7}))
    held = {"if-none-match": got.headers["etag"]}
    assert request(web, "GET", get_path("GetStats", {"campaignId": 7}), headers=held).status == 304
    assert post_json(web, "GetStats", {"campaign_id": 0}).status == 400
    assert post_json(web, "Increment", INCREMENTED, AUTHORIZED).status == 200
    asked = stats_pb2.GetStatsRequest(campaign_id=7).SerializeToString()
    assert grpc_web(web, "GetStats", asked) == 0
    stub = stats_pb2_grpc.StatsServiceStub(grpc.insecure_channel(f"127.0.0.1:{web.port}"))
    stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=7))

    assert answered(web, GET_STATS, "OK", "connect") == 3  # the POST, the GET and the 304
    assert answered(web, GET_STATS, "INVALID_ARGUMENT", "connect") == 1
    assert answered(web, INCREMENT, "OK", "connect") == 1
    assert answered(web, GET_STATS, "OK", "grpc-web") == 1
    assert answered(web, GET_STATS, "OK", "grpc") == 1  # the gRPC port's
    assert started(web, GET_STATS, "connect") == 4
    assert started(web, GET_STATS, "grpc-web") == 1
    duration = "proca_stats_rpc_duration_seconds_count"
    assert sample(web, duration, method=GET_STATS, protocol="connect") == 4
    assert sample(web, duration, method=GET_STATS, protocol="grpc-web") == 1
    # The same names, labels and codes as gRPC's on the real /metrics port.
    assert web.metrics_port is not None
    samples = scrape(web.metrics_port)
    labels = (("code", "OK"), ("method", GET_STATS), ("protocol", "connect"))
    assert samples["proca_stats_rpcs_total", labels] == 3


def test_refusals_are_counted_whoever_answers_them(web: StatsServer) -> None:
    page = {"origin": "http://127.0.0.1:8000"}
    refusals = [
        # the token check, before the body is read
        (lambda: post_json(web, "Increment", INCREMENTED), 401, INCREMENT, "UNAUTHENTICATED"),
        # the front: a write from a browser, an unknown method, a head too large
        (
            lambda: post_json(web, "Increment", INCREMENTED, AUTHORIZED | page),
            403,
            INCREMENT,
            "PERMISSION_DENIED",
        ),
        (lambda: post_json(web, "Nothing", {}), 404, "unknown", "UNIMPLEMENTED"),
        (
            lambda: post_json(web, "GetStats", {}, {"x-filler": "y" * 40_000}),
            431,
            GET_STATS,
            "RESOURCE_EXHAUSTED",
        ),
        # connectrpc's own, bodiless: a GET of a write, a content type it does not speak
        (
            lambda: request(web, "GET", get_path("Increment", {}), headers=AUTHORIZED),
            405,
            INCREMENT,
            "UNIMPLEMENTED",
        ),
        (
            lambda: request(
                web, "POST", f"{SERVICE}/GetStats", b"{}", {"content-type": "text/plain"}
            ),
            415,
            GET_STATS,
            "INVALID_ARGUMENT",
        ),
    ]
    for call, status, method, code in refusals:
        before = answered(web, method, code, "connect")
        assert call().status == status
        assert answered(web, method, code, "connect") == before + 1, (status, code)
    assert answered(web, INCREMENT, "OK", "connect") == 0
    # Neither a preflight nor a probe is a call.
    preflight = {"origin": page["origin"], "access-control-request-method": "POST"}
    assert request(web, "OPTIONS", f"{SERVICE}/GetStats", headers=preflight).status == 204
    assert request(web, "GET", "/readyz").status == 200
    total = sample(web, "proca_stats_rpcs_started_total")
    assert total == sample(web, "proca_stats_rpcs_total") == len(refusals)


def test_a_stream_is_counted_when_it_ends(web: StatsServer) -> None:
    with connect_stream(web, {"campaign_id": 7, "min_interval_ms": 50}) as frames:
        next(frames)  # refused: the end of the stream carries the error
    assert answered(web, WATCH, "INVALID_ARGUMENT", "connect") == 1

    async def watch_then_leave() -> None:
        stream = async_stream(port_of(web), {"campaign_id": 7})
        await anext(stream)
        await stream.aclose()

    asyncio.run(watch_then_leave())
    wait_for(lambda: answered(web, WATCH, "CANCELLED", "connect") == 1, what="the stream counted")
    assert started(web, WATCH, "connect") == 2
    assert sample(web, "proca_stats_rpc_duration_seconds_count", method=WATCH) == 0  # unary only
