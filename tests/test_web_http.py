"""The HTTP port as HTTP: CORS for reads only, and clients that would hold the server
(slowloris heads and bodies, readers that stop reading or vanish) cut off."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.app import StatsServer
from proca_stats.server.settings import HttpTimeouts, Limits
from tests.support.waiting import wait_for
from tests.support.web import (
    SERVICE,
    async_stream,
    closed_within,
    envelope,
    get_path,
    h2_exchange,
    port_of,
    post_json,
    request,
    start_web,
)

PAGE = "http://127.0.0.1:8000"
INCREMENT = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


@pytest.fixture
def web(start_server: Callable[..., StatsServer], database_url: str) -> StatsServer:
    return start_web(start_server, database_url, cors_origins=(PAGE,))


def preflight(server: StatsServer, path: str, origin: str, method: str = "POST") -> int:
    answer = request(
        server,
        "OPTIONS",
        path,
        headers={
            "origin": origin,
            "access-control-request-method": method,
            "access-control-request-headers": "content-type,connect-protocol-version",
        },
    )
    if answer.status == 204:
        assert answer.headers["access-control-allow-origin"] == origin
        assert "connect-protocol-version" in answer.headers["access-control-allow-headers"]
        assert answer.headers["access-control-allow-methods"] == "GET, POST"
    else:
        assert "access-control-allow-origin" not in answer.headers
    return answer.status


def test_reads_are_allowed_from_the_listed_origins_only(web: StatsServer) -> None:
    for rpc in ("GetStats", "BatchGetStats", "WatchStats"):
        assert preflight(web, f"{SERVICE}/{rpc}", PAGE) == 204
        assert preflight(web, f"{SERVICE}/{rpc}", "http://elsewhere.example") == 403
    listed = post_json(web, "GetStats", {"campaign_id": 7}, {"origin": PAGE})
    assert listed.headers["access-control-allow-origin"] == PAGE
    assert "grpc-status" in listed.headers["access-control-expose-headers"]
    assert listed.headers["vary"] == "Origin"
    unlisted = post_json(
        web, "GetStats", {"campaign_id": 7}, {"origin": "http://elsewhere.example"}
    )
    assert "access-control-allow-origin" not in unlisted.headers


def test_writes_are_never_allowed_from_a_browser(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    for origins in ((PAGE,), ("*",)):
        server = start_web(start_server, database_url, cors_origins=origins)
        assert preflight(server, f"{SERVICE}/Increment", PAGE) == 403
        refused = post_json(server, "Increment", INCREMENT, {"origin": PAGE})
        assert (refused.status, refused.json()["code"]) == (403, "permission_denied")
        assert "access-control-allow-origin" not in refused.headers
        assert (
            post_json(server, "GetStats", {"campaign_id": 7}).json()["stats"]["supporters"] == "0"
        )
        assert post_json(server, "Increment", INCREMENT).status == 200  # from a server: counted


def test_any_origin_may_read_with_a_star(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, cors_origins=("*",))
    answer = request(
        server, "GET", get_path("GetStats", {"campaignId": 7}), headers={"origin": "http://a.b"}
    )
    assert answer.headers["access-control-allow-origin"] == "*"
    assert "vary" not in answer.headers or "Origin" not in answer.headers["vary"]


def test_without_cors_origins_no_page_may_read(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url)
    assert preflight(server, f"{SERVICE}/GetStats", PAGE) == 403
    answer = post_json(server, "GetStats", {"campaign_id": 7}, {"origin": PAGE})
    assert answer.status == 200
    assert "access-control-allow-origin" not in answer.headers


def increment_of(action_type: str) -> stats_pb2.IncrementRequest:
    return stats_pb2.IncrementRequest(**INCREMENT | {"action_type": action_type})  # type: ignore[arg-type]


@pytest.fixture
def quick_idle(start_server: Callable[..., StatsServer], database_url: str) -> StatsServer:
    """A server whose idle timeout is 1 s (granian's own default, 30 s, must not be what cuts)."""
    return start_web(start_server, database_url, http_timeouts=HttpTimeouts(idle=1.0))


def test_a_slow_request_head_is_cut_off(quick_idle: StatsServer) -> None:
    server = quick_idle
    with socket.create_connection(("127.0.0.1", port_of(server))) as slow:
        slow.sendall(b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        assert closed_within(slow, 4, trickle=b"x-slow: " + b"y" * 200) < 4
    with socket.create_connection(("127.0.0.1", port_of(server))) as silent:
        assert closed_within(silent, 4) < 4
    with socket.create_connection(("127.0.0.1", port_of(server))) as half_preface:
        half_preface.sendall(b"PRI * HTTP/2.0\r\n")  # of HTTP/2's 24 bytes, 16
        assert closed_within(half_preface, 4) < 4
    assert request(server, "GET", "/readyz").status == 200  # the server is unharmed


def test_a_slow_request_body_is_refused(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, http_timeouts=HttpTimeouts(body=1.0))
    with socket.create_connection(("127.0.0.1", port_of(server))) as slow:
        slow.sendall(
            f"POST {SERVICE}/Increment HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            "content-length: 100\r\n\r\n{".encode()
        )
        slow.settimeout(8)
        answer = b""
        while not answer.endswith(b"0\r\n\r\n"):  # the head and the body may come apart
            received = slow.recv(4096)
            if not received:
                break
            answer += received
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"deadline_exceeded"' in answer


def test_a_reader_that_stops_reading_is_dropped(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(
        start_server,
        database_url,
        limits=Limits(max_keys_per_map=5000, max_request_bytes=8192),
        http_timeouts=HttpTimeouts(write=1.0),
    )
    for n in range(3000):  # a campaign whose every message is about 60 kB
        server.answers.increment(increment_of(f"type-{n:04}-{'x' * 10}"))
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(("127.0.0.1", port_of(server)))
    body = envelope({"campaign_id": 7, "min_interval_ms": 100})
    stuck.sendall(
        f"POST {SERVICE}/WatchStats HTTP/1.1\r\nhost: x\r\n"
        f"content-type: application/connect+json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    wait_for(lambda: len(server.watchers) == 1, what="the stream to open")
    deadline = time.monotonic() + 30
    while len(server.watchers) == 1 and time.monotonic() < deadline:  # changes, never read
        server.answers.increment(increment_of("type-0000-xxxxxxxxxx"))
        time.sleep(0.1)
    assert len(server.watchers) == 0, "the reader that took nothing still holds its place"
    stuck.close()
    assert post_json(server, "GetStats", {"campaign_id": 7}).status == 200


def test_a_reader_that_leaves_frees_its_place(web: StatsServer) -> None:
    async def watch_then_leave() -> None:
        connected = asyncio.Event()
        stream = async_stream(port_of(web), {"campaign_id": 7}, connected)
        first = await anext(stream)
        assert first["stats"]["supporters"] == "0"
        await stream.aclose()  # the connection closes, without a word to the server

    asyncio.run(watch_then_leave())
    wait_for(lambda: len(web.watchers) == 0, timeout=5, what="the place to be freed")


def test_an_idle_connection_is_closed_but_a_quiet_stream_is_kept(quick_idle: StatsServer) -> None:
    server = quick_idle
    with socket.create_connection(("127.0.0.1", port_of(server))) as kept_alive:
        kept_alive.sendall(b"GET /readyz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        assert kept_alive.recv(4096).startswith(b"HTTP/1.1 200")
        assert closed_within(kept_alive, 4) < 4  # its request answered, it holds nothing
    with socket.create_connection(("127.0.0.1", port_of(server))) as h2c:
        h2_exchange(h2c, "GET", "/readyz")
        assert closed_within(h2c, 4) < 4  # HTTP/2 with no stream open: idle too

    async def quiet_then_changed() -> Any:
        stream = async_stream(port_of(server), {"campaign_id": 7})
        await anext(stream)  # the figures at once; then nothing changes for 3 idle timeouts
        await asyncio.sleep(3)
        server.answers.increment(increment_of("signature"))
        try:
            return await asyncio.wait_for(anext(stream), timeout=5)
        finally:
            await stream.aclose()

    assert asyncio.run(quiet_then_changed())["stats"]["supporters"] == "1"
