"""StatsService on the HTTP port (Connect): the gRPC port's answers, statuses mapped to HTTP,
cacheable GETs, look-up by action page, readiness and shutdown."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.app import StatsServer
from proca_stats.server.database import init_schema
from proca_stats.server.settings import Limits
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for
from tests.support.web import (
    END_STREAM,
    SERVICE,
    Answer,
    connect_stream,
    get_path,
    port_of,
    post_json,
    request,
    start_web,
)

INCREMENT = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


def figures(answer: Answer) -> dict[str, object]:
    stats = dict(answer.json()["stats"])
    stats.pop("syncedAt")
    return stats


def grpc_stub(server: StatsServer) -> stats_pb2_grpc.StatsServiceStub:
    return stats_pb2_grpc.StatsServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))


@pytest.fixture
def web(start_server: Callable[..., StatsServer], database_url: str) -> StatsServer:
    return start_web(start_server, database_url, http_max_age=7)


def test_json_post_get_and_binary_give_the_grpc_answer(web: StatsServer) -> None:
    stub = grpc_stub(web)
    stub.Increment(stats_pb2.IncrementRequest(**INCREMENT, area="DE"))  # type: ignore[arg-type]
    over_grpc = stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=7))
    posted = post_json(web, "GetStats", {"campaign_id": 7})
    got = request(web, "GET", get_path("GetStats", {"campaignId": 7}))
    binary = request(
        web,
        "POST",
        f"{SERVICE}/GetStats",
        stats_pb2.GetStatsRequest(campaign_id=7).SerializeToString(),
        {"content-type": "application/proto"},
    )
    assert (posted.status, got.status, binary.status) == (200, 200, 200)
    assert stats_pb2.GetStatsResponse.FromString(binary.body) == over_grpc
    assert (
        figures(posted)
        == figures(got)
        == {
            "campaignId": "7",
            "supporters": "1",
            "actionsByType": {"signature": "1"},
            "supportersByArea": {"DE": "1"},
            "supportersByOrg": {"2": "1"},
        }
    )
    unknown = post_json(web, "GetStats", {"campaign_id": 404})
    assert figures(unknown) == {  # zeros and empty maps are spelled out
        "campaignId": "404",
        "supporters": "0",
        "actionsByType": {},
        "supportersByArea": {},
        "supportersByOrg": {},
    }
    batch = post_json(web, "BatchGetStats", {"campaign_ids": [7, 404, 7]})
    assert [s["campaignId"] for s in batch.json()["stats"]] == ["7", "404", "7"]
    assert batch.json()["stats"][0]["supporters"] == "1"


def test_increment_over_http_counts(web: StatsServer) -> None:
    answer = post_json(web, "Increment", INCREMENT)
    assert (answer.status, answer.json()) == (200, {"counted": True})
    assert figures(post_json(web, "GetStats", {"campaign_id": 7}))["supporters"] == "1"
    repeat = post_json(web, "Increment", INCREMENT | {"action_id": 70})
    assert (repeat.status, repeat.json()) == (200, {"counted": True})
    again = post_json(web, "Increment", INCREMENT | {"action_id": 70})
    assert (again.status, again.json()) == (200, {"counted": False})


@pytest.mark.parametrize(
    ("rpc", "message", "status", "code", "text"),
    [
        ("GetStats", {"campaign_id": 0}, 400, "invalid_argument", "campaign_id: must be > 0"),
        (
            "Increment",
            INCREMENT | {"action_type": ""},
            400,
            "invalid_argument",
            "action_type: must be 1..255 characters, got 0",
        ),
        ("BatchGetStats", {"campaign_ids": []}, 400, "invalid_argument", "campaign_ids: must hold"),
        ("GetStats", {"action_page_id": 99}, 404, "not_found", "action_page_id: no action page"),
        ("Increment", INCREMENT | {"campaign_id": 3}, 429, "resource_exhausted", "campaign_id:"),
        ("GetStats", {"campaign_id": "seven"}, 400, "invalid_argument", "not a valid GetStats"),
    ],
)
def test_refusals_get_the_grpc_ports_message_and_their_http_status(
    start_server: Callable[..., StatsServer],
    database_url: str,
    rpc: str,
    message: dict[str, object],
    status: int,
    code: str,
    text: str,
) -> None:
    server = start_web(start_server, database_url, limits=Limits(max_campaigns=1))
    assert post_json(server, "Increment", INCREMENT).status == 200  # the one campaign allowed
    before = post_json(server, "BatchGetStats", {"campaign_ids": [3, 7]}).body
    answer = post_json(server, rpc, message)
    assert (answer.status, answer.json()["code"]) == (status, code)
    assert text in answer.json()["message"]
    assert post_json(server, "BatchGetStats", {"campaign_ids": [3, 7]}).body == before


def test_tokens_are_the_grpc_ports(
    start_server: Callable[..., StatsServer], database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text("web-secret\n")
    server = start_web(start_server, database_url, tokens=load_tokens(tmp_path / "tokens"))
    refused = post_json(server, "Increment", INCREMENT)
    assert (refused.status, refused.json()["code"]) == (401, "unauthenticated")
    wrong = post_json(server, "Increment", INCREMENT, {"authorization": "Bearer guess"})
    assert wrong.status == 401
    # Checked before the body is read: neither a body too large nor one that is no JSON
    # gets further than the token (gRPC reads the body first).
    for body in (b"{" + b" " * 100_000 + b"}", b"not json"):
        headers = {"content-type": "application/json"}
        assert request(server, "POST", f"{SERVICE}/Increment", body, headers).status == 401
    assert post_json(server, "GetStats", {"campaign_id": 7}).json()["stats"]["supporters"] == "0"
    taken = post_json(server, "Increment", INCREMENT, {"authorization": "bearer web-secret"})
    assert taken.status == 200
    assert post_json(server, "GetStats", {"campaign_id": 7}).json()["stats"]["supporters"] == "1"


def test_reads_need_a_token_with_protect_reads_and_are_not_cached_publicly(
    start_server: Callable[..., StatsServer], database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "tokens").write_text("web-secret\n")
    server = start_web(
        start_server, database_url, tokens=load_tokens(tmp_path / "tokens"), protect_reads=True
    )
    path = get_path("GetStats", {"campaignId": 7})
    assert request(server, "GET", path).status == 401
    answer = request(server, "GET", path, headers={"authorization": "Bearer web-secret"})
    assert answer.status == 200
    assert answer.headers["cache-control"] == "private, max-age=5"


def test_a_get_is_cacheable_and_its_etag_changes_exactly_when_the_figures_do(
    web: StatsServer,
) -> None:
    path = get_path("GetStats", {"campaignId": 7})
    first = request(web, "GET", path)
    assert first.headers["cache-control"] == "public, max-age=7"
    tag = first.headers["etag"]
    assert tag.startswith('W/"')
    again = request(web, "GET", path, headers={"if-none-match": tag})
    assert (again.status, again.body, again.headers["etag"]) == (304, b"", tag)

    resync(web)  # a new snapshot, the same figures: a new synced_at, the same tag
    after_sync = request(web, "GET", path)
    assert after_sync.json()["stats"]["syncedAt"] != first.json()["stats"]["syncedAt"]
    assert after_sync.headers["etag"] == tag
    assert request(web, "GET", path, headers={"if-none-match": tag}).status == 304

    assert post_json(web, "Increment", INCREMENT).status == 200
    changed = request(web, "GET", path, headers={"if-none-match": tag})
    assert changed.status == 200
    assert changed.headers["etag"] != tag
    assert changed.json()["stats"]["supporters"] == "1"
    other = request(web, "GET", get_path("GetStats", {"campaignId": 8}))
    assert other.headers["etag"] not in (tag, changed.headers["etag"])  # tags name the campaign

    batch = get_path("BatchGetStats", {"campaignIds": [7, 8]})
    batch_tag = request(web, "GET", batch).headers["etag"]
    assert request(web, "GET", batch, headers={"if-none-match": batch_tag}).status == 304
    assert post_json(web, "Increment", INCREMENT | {"campaign_id": 8}).status == 200
    assert request(web, "GET", batch, headers={"if-none-match": batch_tag}).status == 200
    # POSTed reads are not for caches.
    assert "etag" not in post_json(web, "GetStats", {"campaign_id": 7}).headers


def test_an_action_page_is_answered_with_its_campaigns_figures(
    db: ProcaData, start_server: Callable[..., StatsServer], database_url: str
) -> None:
    org = db.org()
    campaign, other = db.campaign(org), db.campaign(org)
    for _ in range(2):  # so that the page's id is no campaign's id
        db.page(other, org)
    page = db.page(campaign, org, extra_supporters=2)
    assert page not in (campaign, other)
    db.person(campaign, page, b"alice", area="DE")
    server = start_web(start_server, database_url)
    stub = grpc_stub(server)

    by_page = post_json(server, "GetStats", {"action_page_id": page})
    by_campaign = post_json(server, "GetStats", {"campaign_id": campaign})
    assert figures(by_page) == figures(by_campaign)
    assert figures(by_page)["campaignId"] == str(campaign)
    assert figures(by_page)["supporters"] == "3"
    over_grpc = stub.GetStats(stats_pb2.GetStatsRequest(action_page_id=page)).stats
    assert (over_grpc.campaign_id, over_grpc.supporters) == (campaign, 3)

    for message, code in [
        ({"action_page_id": page + 100}, grpc.StatusCode.NOT_FOUND),
        ({"action_page_id": page, "campaign_id": campaign}, grpc.StatusCode.INVALID_ARGUMENT),
        ({}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"action_page_id": -1}, grpc.StatusCode.INVALID_ARGUMENT),
    ]:
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetStats(stats_pb2.GetStatsRequest(**message))
        assert refused.value.code() == code
        answer = post_json(server, "GetStats", message)
        assert answer.json()["code"] == code.name.lower()
        assert answer.json()["message"] == refused.value.details()

    # The map comes with each snapshot: a page moved to another campaign answers for it.
    db.conn.execute("UPDATE action_pages SET campaign_id = %s WHERE id = %s", (other, page))
    resync(server)
    assert figures(post_json(server, "GetStats", {"action_page_id": page}))["campaignId"] == str(
        other
    )


def test_size_limits_are_the_grpc_ports(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, limits=Limits(max_request_bytes=200))
    fits = INCREMENT | {"action_type": "x" * 100}
    assert post_json(server, "Increment", fits).status == 200
    too_big = post_json(server, "Increment", INCREMENT | {"action_type": "x" * 255})
    assert (too_big.status, too_big.json()["code"]) == (429, "resource_exhausted")
    huge = request(
        server,
        "POST",
        f"{SERVICE}/Increment",
        b"{" + b" " * 1_000_000 + b"}",
        {"content-type": "application/json"},
    )
    assert (huge.status, huge.json()["code"]) == (429, "resource_exhausted")
    # In a GET the message is in the URL, and capped there.
    long_get = request(server, "GET", get_path("BatchGetStats", {"campaignIds": [7] * 150}))
    assert (long_get.status, long_get.json()["code"]) == (429, "resource_exhausted")
    head = request(server, "GET", "/readyz", headers={"x-filler": "y" * 40_000})
    assert (head.status, head.json()["code"]) == (431, "resource_exhausted")
    assert figures(post_json(server, "GetStats", {"campaign_id": 7}))["actionsByType"] == {
        "x" * 100: "1"
    }


def test_a_body_past_the_cap_is_refused_without_being_read_to_its_end(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, limits=Limits(max_request_bytes=200))
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=5) as client:
        client.sendall(
            f"POST {SERVICE}/Increment HTTP/1.1\r\nhost: x\r\n"
            "content-type: application/json\r\ncontent-length: 100000000\r\n\r\n".encode()
            + b" " * 1000  # past the cap; the other 99,999,000 bytes never come
        )
        answer = b""
        while b"}" not in answer:  # within the socket's 5 s, well before the body timeout
            chunk = client.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 429")
    assert b'"resource_exhausted"' in answer


def test_readyz_says_503_until_the_first_calculation_and_healthz_200(
    start_server: Callable[..., StatsServer], create_database: Callable[[], str]
) -> None:
    url = create_database()  # no tables yet: every calculation fails
    server = start_web(start_server, url, ready=False)
    assert request(server, "GET", "/healthz").status == 200
    not_ready = request(server, "GET", "/readyz")
    assert (not_ready.status, not_ready.headers["cache-control"]) == (503, "no-store")
    refused = post_json(server, "GetStats", {"campaign_id": 1})
    assert (refused.status, refused.json()["code"]) == (503, "unavailable")
    assert post_json(server, "Increment", INCREMENT).status == 200  # accepted meanwhile
    init_schema(url)
    wait_for(lambda: request(server, "GET", "/readyz").status == 200, what="ready over HTTP")
    assert request(server, "HEAD", "/readyz").status == 200
    assert post_json(server, "GetStats", {"campaign_id": 1}).status == 200


def test_watch_sends_changes_and_shutdown_ends_the_stream_cleanly(web: StatsServer) -> None:
    with connect_stream(web, {"campaign_id": 7, "min_interval_ms": 100}) as frames:
        flags, first = next(frames)
        assert (flags, first["stats"]["supporters"]) == (0, "0")
        post_json(web, "Increment", INCREMENT)
        flags, second = next(frames)
        assert second["stats"]["supporters"] == "1"
        assert len(web.watchers) == 1
        stopping = threading.Thread(target=web.stop, kwargs={"grace": 5})
        stopping.start()
        flags, end = next(frames)
        stopping.join()
    assert flags & END_STREAM
    assert end == {}  # no error: the stream ended as the protocol says a stream ends well
    assert len(web.watchers) == 0


def test_a_refused_watch_ends_with_the_error_in_the_stream(web: StatsServer) -> None:
    with connect_stream(web, {"campaign_id": 7, "min_interval_ms": 50}) as frames:
        flags, end = next(frames)
    assert flags & END_STREAM
    assert end["error"]["code"] == "invalid_argument"
    assert end["error"]["message"].startswith("min_interval_ms: must be 0")
    assert len(web.watchers) == 0


def test_the_watcher_cap_is_shared_with_grpc(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url, max_watchers=1)
    with connect_stream(server, {"campaign_id": 7}) as frames:
        next(frames)
        with connect_stream(server, {"campaign_id": 7}) as second:
            _, end = next(second)
        assert end["error"]["code"] == "resource_exhausted"
        watch = grpc_stub(server).WatchStats(stats_pb2.WatchStatsRequest(campaign_id=7))
        with pytest.raises(grpc.RpcError) as refused:
            next(watch)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_error_body_is_json_for_every_refusal(web: StatsServer) -> None:
    for method, path, body, content_type, status, code in [
        (
            "GET",
            f"{SERVICE}/Increment?encoding=json&message=%7B%7D",
            None,
            None,
            405,
            "unimplemented",
        ),
        ("POST", f"{SERVICE}/GetStats", b"{}", "text/plain", 415, "invalid_argument"),
        ("POST", f"{SERVICE}/Nothing", b"{}", "application/json", 404, "unimplemented"),
        ("GET", "/index.html", None, None, 404, "not_found"),
        ("PUT", "/readyz", None, None, 405, "unimplemented"),
    ]:
        headers = {"content-type": content_type} if content_type else {}
        answer = request(web, method, path, body, headers)
        assert answer.status == status, path
        assert answer.headers["content-type"] == "application/json"
        assert set(json.loads(answer.body)) == {"code", "message"}
        assert answer.json()["code"] == code, path


def test_an_increment_over_http_reaches_grpc_watchers(web: StatsServer) -> None:
    watch = grpc_stub(web).WatchStats(stats_pb2.WatchStatsRequest(campaign_id=7))
    assert next(watch).stats.supporters == 0
    post_json(web, "Increment", INCREMENT)
    assert next(watch).stats.supporters == 1
    watch.cancel()


def test_a_page_lookup_sees_pages_added_by_a_sync(
    db: ProcaData, start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_web(start_server, database_url)
    assert post_json(server, "GetStats", {"action_page_id": 1}).status == 404
    org = db.org()
    page = db.page(db.campaign(org), org, extra_supporters=4)
    resync(server)
    assert figures(post_json(server, "GetStats", {"action_page_id": page}))["supporters"] == "4"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM action_pages")
    resync(server)
    assert post_json(server, "GetStats", {"action_page_id": page}).status == 404


def test_a_grpc_client_on_the_http_port_is_sent_to_the_grpc_port(web: StatsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port_of(web)}") as channel:
        stub = stats_pb2_grpc.StatsServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=7), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNIMPLEMENTED
    assert "call gRPC on the gRPC port (--listen)" in refused.value.details()
    assert figures(post_json(web, "GetStats", {"campaign_id": 7}))["supporters"] == "0"
