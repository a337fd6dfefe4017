"""TLS, mutual TLS, bearer tokens, the loopback rule and the caps, against real servers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from proca_stats.cli.serve import check_exposure
from proca_stats.client import (
    InvalidArgument,
    ResourceExhausted,
    StatsClient,
    Unauthenticated,
    Unavailable,
)
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.auth import load_tokens
from proca_stats.server.api.health import HealthServicer
from proca_stats.server.api.tls import read_tls
from proca_stats.server.app import StatsServer
from proca_stats.server.checks import ConfigError, is_loopback
from proca_stats.server.settings import TlsKeys
from proca_stats.server.state.limits import Limits
from tests.support.certificates import Authority
from tests.support.metrics import sample
from tests.support.waiting import wait_for
from tests.support.watching import Recorder

TOKENS = "# deploy tokens\nalpha-token\n\n  beta-token  \n"


def started(server: StatsServer) -> StatsServer:
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    return server


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return Authority(tmp_path, "test-ca")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKENS)
    return path


def tls_client(port: int, authority: Authority, **client_cert: bytes) -> StatsClient:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=authority.cert.read_bytes(), **client_cert
    )
    return StatsClient(f"127.0.0.1:{port}", credentials=credentials, timeout=5)


def test_tls_serves_clients_that_trust_the_ca(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    issued = authority.issue("server", server=True)
    server = started(start_server(database_url, tls=read_tls(issued.cert, issued.key)))
    with tls_client(server.port, authority) as client:
        client.increment(1, 1, "signature", new_supporter=True)
        assert client.get_stats(1).supporters == 1
    with (
        StatsClient(f"127.0.0.1:{server.port}", timeout=2) as plaintext,
        pytest.raises(Unavailable),
    ):
        plaintext.get_stats(1)
    stranger = Authority(authority.folder, "other-ca")
    with tls_client(server.port, stranger) as untrusting, pytest.raises(Unavailable):
        untrusting.get_stats(1)


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    start_server: Callable[..., StatsServer], database_url: str, authority: Authority
) -> None:
    issued = authority.issue("server", server=True)
    server = started(
        start_server(database_url, tls=read_tls(issued.cert, issued.key, authority.cert))
    )
    member = authority.issue("member", server=False)
    with tls_client(
        server.port, authority, private_key=member.key_pem, certificate_chain=member.cert_pem
    ) as client:
        assert client.get_stats(1).campaign_id == 1
    with tls_client(server.port, authority) as anonymous, pytest.raises(Unavailable):
        anonymous.get_stats(1)
    outsider = Authority(authority.folder, "rogue-ca").issue("outsider", server=False)
    with (
        tls_client(
            server.port,
            authority,
            private_key=outsider.key_pem,
            certificate_chain=outsider.cert_pem,
        ) as rogue,
        pytest.raises(Unavailable),
    ):
        rogue.get_stats(1)


def test_tokens_guard_increment_and_leave_reads_open(
    start_server: Callable[..., StatsServer], database_url: str, token_file: Path
) -> None:
    server = started(start_server(database_url, tokens=load_tokens(token_file)))
    target = f"127.0.0.1:{server.port}"
    for token in (None, "wrong", "alpha", "Bearer alpha-token", "# deploy tokens"):
        with StatsClient(target, token=token) as client, pytest.raises(Unauthenticated):
            client.increment(1, 1, "signature", new_supporter=True)
    for token in ("alpha-token", "beta-token"):
        with StatsClient(target, token=token) as client:
            client.increment(1, 1, "signature", new_supporter=True)
    with StatsClient(target) as reader:
        assert reader.get_stats(1).supporters == 2
    assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    assert "proca.stats.v1.StatsService" in listed_services(server.port)  # reflection is open


@pytest.mark.parametrize("scheme", ["bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(
    start_server: Callable[..., StatsServer], database_url: str, token_file: Path, scheme: str
) -> None:
    server = started(start_server(database_url, tokens=load_tokens(token_file)))
    request = stats_pb2.IncrementRequest(
        campaign_id=1, org_id=1, action_type="signature", new_supporter=True
    )
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stats_pb2_grpc.StatsServiceStub(channel).Increment(
            request, timeout=5, metadata=(("authorization", f"{scheme} alpha-token"),)
        )
    assert server.store.get(1)[0].supporters == 1


def test_protect_reads_guards_get_stats_but_not_health(
    start_server: Callable[..., StatsServer], database_url: str, token_file: Path
) -> None:
    server = started(start_server(database_url, tokens=load_tokens(token_file), protect_reads=True))
    target = f"127.0.0.1:{server.port}"
    with StatsClient(target) as anonymous:
        with pytest.raises(Unauthenticated):
            anonymous.get_stats(1)
        with pytest.raises(Unauthenticated):
            anonymous.batch_get_stats([1])
        with pytest.raises(Unauthenticated), anonymous.watch_stats(1) as watch:
            next(watch)
    with StatsClient(target, token="beta-token") as client:
        assert client.get_stats(1).campaign_id == 1
        assert [s.campaign_id for s in client.batch_get_stats([1, 2])] == [1, 2]
        with client.watch_stats(1) as watch:
            assert next(watch).campaign_id == 1
    assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as refused:
        listed_services(server.port)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "proca.stats.v1.StatsService" in listed_services(server.port, token="beta-token")


def health_status(port: int) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return int(reply.status)


def listed_services(port: int, token: str | None = None) -> set[str]:
    """The services the server names through a real reflection call (as grpcurl asks)."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        (answer,) = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request]), timeout=5, metadata=metadata
        )
    return {service.name for service in answer.list_services_response.service}


def test_caps_refuse_new_campaigns_and_keys_but_nothing_else(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    limits = Limits(max_campaigns=2, max_keys_per_map=2)
    server = started(start_server(database_url, limits=limits))
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        client.increment(1, 1, "a", area="DE", new_supporter=True)
        client.increment(2, 1, "a", new_supporter=True)
        with pytest.raises(ResourceExhausted, match=r"campaign_id: .*--max-campaigns"):
            client.increment(3, 1, "a", new_supporter=True)
        client.increment(1, 2, "b", area="FR", new_supporter=True)
        with pytest.raises(ResourceExhausted, match=r"area: .*--max-keys-per-map"):
            client.increment(1, 1, "a", area="IT", new_supporter=True)
        with pytest.raises(ResourceExhausted, match="action_type: "):
            client.increment(1, 1, "c", new_supporter=True)
        with pytest.raises(ResourceExhausted, match="org_id: "):
            client.increment(1, 3, "a", new_supporter=True)
        client.increment(1, 2, "b", area="FR", new_supporter=True)  # existing keys still count
        stats = client.get_stats(1)
        assert stats.supporters == 3
        assert dict(stats.actions_by_type) == {"a": 1, "b": 2}
        assert dict(stats.supporters_by_area) == {"DE": 1, "FR": 2}
        assert dict(stats.supporters_by_org) == {1: 1, 2: 2}
        assert client.get_stats(3).supporters == 0
        assert len(server.store) == 2


def test_oversized_request_is_refused(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = started(start_server(database_url, limits=Limits(max_request_bytes=1024)))
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(ResourceExhausted):
            client.increment(1, 1, "x" * 2000)
        with pytest.raises(InvalidArgument):  # under the size cap, over the contract's limit
            client.increment(1, 1, "x" * 900)
        assert client.get_stats(1).supporters == 0


def test_bytes_that_are_not_protobuf_are_invalid_argument(server: StatsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        raw = channel.unary_unary("/proca.stats.v1.StatsService/Increment")
        for junk in (b"\xff\xff\xff", b"\x1a\x02\xc3\x28"):  # bad tag; field 3 not UTF-8
            with pytest.raises(grpc.RpcError) as refused:
                raw(junk, timeout=5)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details().startswith("request: not a valid IncrementRequest")
    assert len(server.store) == 0


def send_bytes(channel: grpc.Channel, method: str, body: bytes) -> None:
    """Send ``body`` as the request of ``method``, as its kind wants; read the first answer."""
    if method.endswith("/ServerReflectionInfo"):  # a stream each way
        list(channel.stream_stream(method)(iter([body]), timeout=5))
    elif method.endswith("/Watch"):  # a stream of answers
        next(channel.unary_stream(method)(body, timeout=5))
    else:
        channel.unary_unary(method)(body, timeout=5)


BAD_TAG = b"\xff\xff\xff"
NOT_UTF8 = b"\x0a\x02\xc3\x28"  # field 1, a string in these requests, not UTF-8
OTHER_SERVICES = [
    ("/grpc.health.v1.Health/Check", "HealthCheckRequest", BAD_TAG),
    ("/grpc.health.v1.Health/Check", "HealthCheckRequest", NOT_UTF8),
    ("/grpc.health.v1.Health/Watch", "HealthCheckRequest", BAD_TAG),
    ("/grpc.health.v1.Health/Watch", "HealthCheckRequest", NOT_UTF8),
    (
        "/grpc.health.v1.Health/List",
        "HealthListRequest",
        BAD_TAG,
    ),  # no fields: NOT_UTF8 parses as an unknown one
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "ServerReflectionRequest",
        BAD_TAG,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "ServerReflectionRequest",
        NOT_UTF8,
    ),
]


@pytest.mark.parametrize(("method", "request_type", "junk"), OTHER_SERVICES)
def test_health_and_reflection_refuse_undecodable_bytes_without_logging_an_error(
    server: StatsServer,
    caplog: pytest.LogCaptureFixture,
    method: str,
    request_type: str,
    junk: bytes,
) -> None:
    """Bad bytes are the caller's mistake: INVALID_ARGUMENT, not INTERNAL and a traceback."""
    with (
        grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        send_bytes(channel, method, junk)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(f"request: not a valid {request_type} (")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert health_status(server.port) == health_pb2.HealthCheckResponse.SERVING


def test_health_lists_every_status(server: StatsServer) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest(), timeout=5)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in reply.statuses.items()} == {
        "": serving,
        "proca.stats.v1.StatsService": serving,
    }


def test_health_watches_that_end_while_statuses_change_never_stall_the_server(
    server: StatsServer,
) -> None:
    """A Watch that ends while a status is being sent to it must not hold up gRPC's serving
    thread (grpc's own servicer sends under the lock its end-of-call callback takes there,
    and then every RPC of the server waits): hundreds of watches end while statuses flip."""
    flipping = threading.Event()
    flips = 0

    def flip() -> None:
        nonlocal flips
        while not flipping.is_set():
            server.health.set_serving(("flipping",), flips % 2 == 0)
            flips += 1

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="flipping")
            for _ in range(300):
                watch = stub.Watch(request, timeout=10)
                next(watch)
                watch.cancel()
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        flipping.set()
        flipper.join(10)
    assert not flipper.is_alive(), "set() stalled behind a watch that ended"
    assert flips > 0


def test_health_list_agrees_with_check_through_a_graceful_shutdown() -> None:
    """List answers from statuses kept by our own servicer, the same Check answers: before,
    and after a graceful shutdown, which sets every service NOT_SERVING for good."""
    status = health_pb2.HealthCheckResponse
    servicer = HealthServicer(futures.ThreadPoolExecutor(max_workers=1))
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def listed() -> dict[str, int]:
                reply = stub.List(health_pb2.HealthListRequest(), timeout=5)
                return {name: s.status for name, s in reply.statuses.items()}

            def checked(names: list[str]) -> dict[str, int]:
                request = health_pb2.HealthCheckRequest
                return {n: stub.Check(request(service=n), timeout=5).status for n in names}

            assert listed() == {"": status.NOT_SERVING}
            servicer.set("", status.SERVING)
            servicer.set("a", status.NOT_SERVING)
            assert listed() == checked(["", "a"]) == {"": status.SERVING, "a": status.NOT_SERVING}
            servicer.enter_graceful_shutdown()
            servicer.set("", status.SERVING)  # ignored from now on
            after = {"": status.NOT_SERVING, "a": status.NOT_SERVING}
            assert listed() == checked(["", "a"]) == after
    finally:
        grpc_server.stop(0)


@pytest.mark.parametrize("metrics", [False, True], ids=["tokens", "tokens-and-metrics"])
def test_health_watches_share_one_thread_behind_the_interceptors(
    start_server: Callable[..., StatsServer], database_url: str, token_file: Path, metrics: bool
) -> None:
    """Health Watch is non-blocking on a pool of one thread: wrapping it must keep it so,
    or the first watcher would hold that thread and the next would get no answer."""
    server = started(
        start_server(
            database_url,
            tokens=load_tokens(token_file),
            metrics_listen="127.0.0.1:0" if metrics else None,
        )
    )
    request = health_pb2.HealthCheckRequest(service="proca.stats.v1.StatsService")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watches = [health.Watch(request, timeout=10) for _ in range(3)]
        try:
            for watch in watches:
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        finally:
            for watch in watches:
                watch.cancel()
    if metrics:  # counted when they end
        method = "grpc.health.v1.Health/Watch"
        wait_for(
            lambda: (
                sum(
                    sample(server, "proca_stats_rpcs_total", method=method, code=code)
                    for code in ("OK", "CANCELLED")
                )
                == 3
            ),
            what="the three watches to be counted",
        )


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "[::1]", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert is_loopback(host)
    check_exposure(host, tls=None, insecure=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "[::]", "192.0.2.1", "example.invalid"])
def test_other_hosts_need_tls_or_insecure(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigError, match="--tls-cert and --tls-key, or --insecure"):
        check_exposure(host, tls=None, insecure=False)
    check_exposure(host, tls=None, insecure=True)
    check_exposure(host, tls=TlsKeys(b"cert", b"key"), insecure=False)


def test_watch_streams_keep_their_own_threads_behind_the_interceptors(
    start_server: Callable[..., StatsServer], database_url: str, token_file: Path
) -> None:
    """Tokens and metrics wrap every handler; WatchStats must still run on its own pool."""
    server = started(
        start_server(database_url, tokens=load_tokens(token_file), metrics_listen="127.0.0.1:0")
    )
    target = f"127.0.0.1:{server.port}"
    with StatsClient(target) as reader, StatsClient(target, token="alpha-token") as writer:
        recorder = Recorder(reader.watch_stats(5, min_interval_ms=100))
        recorder.wait_for_count(1)
        assert any(t.name.startswith("proca-stats-watch") for t in threading.enumerate())
        writer.increment(5, 1, "signature", new_supporter=True)
        recorder.arrival(lambda stats: stats.supporters == 1, what="the Increment on the stream")
        recorder.close()
