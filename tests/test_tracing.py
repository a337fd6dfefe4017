"""OpenTelemetry traces of a real server's RPCs and syncs, read with the SDK's in-memory
exporter, and the OTEL_* variables that turn them on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from proca_stats.client import InvalidArgument, StatsClient
from proca_stats.server import version
from proca_stats.server.app import StatsServer
from proca_stats.server.checks import ConfigError
from proca_stats.server.settings import ServeConfig
from proca_stats.server.tracing import SYNC_SPAN, Tracing
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for

GET_STATS = "/proca.stats.v1.StatsService/GetStats"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def start_traced(exporter: InMemorySpanExporter) -> Iterator[Callable[..., StatsServer]]:
    """Starts servers whose spans go to ``exporter``; each is stopped after the test."""
    servers: list[StatsServer] = []

    def start(database_url: str, **config: Any) -> StatsServer:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        settings = ServeConfig(listen="127.0.0.1:0", sync_interval_ms=0, **config)
        servers.append(StatsServer(settings, database_url, Tracing(provider)))
        servers[-1].start()
        return servers[-1]

    yield start
    for server in servers:
        server.stop(grace=0)


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def test_rpcs_are_traced_with_their_status_and_the_callers_trace(
    start_traced: Callable[..., StatsServer],
    database_url: str,
    exporter: InMemorySpanExporter,
) -> None:
    server = start_traced(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        client.get_stats(1)
        with pytest.raises(InvalidArgument):
            client.get_stats(0)
        assert client.increment(1, 2, "signature", new_supporter=True)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        parent = (("traceparent", f"00-{TRACE_ID}-00f067aa0ba902b7-01"),)
        channel.unary_unary(GET_STATS)(b"\x08\x01", metadata=parent, timeout=5)
    answered = named(exporter, GET_STATS)
    assert [span.attributes["rpc.grpc.status_code"] for span in answered] == [0, 3, 0]
    assert all(span.attributes["rpc.system"] == "grpc" for span in answered)
    assert format(answered[-1].context.trace_id, "032x") == TRACE_ID  # the caller's trace
    assert named(exporter, "/proca.stats.v1.StatsService/Increment")


def test_streams_that_run_apart_work_and_are_not_traced(
    start_traced: Callable[..., StatsServer],
    database_url: str,
    exporter: InMemorySpanExporter,
) -> None:
    """WatchStats keeps its own pool and health Watch its non-blocking answer: tracing them
    with the instrumentation's rebuilt handlers would lose both."""
    server = start_traced(database_url, max_watchers=1)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client, client.watch_stats(1) as watch:
        assert next(watch).campaign_id == 1
        assert len(server.watchers) == 1
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stream = health.Watch(health_pb2.HealthCheckRequest())
        assert next(stream).status == health_pb2.HealthCheckResponse.SERVING
        stream.cancel()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == 1
    names = {span.name for span in exporter.get_finished_spans()}
    assert "/grpc.health.v1.Health/Check" in names
    assert not names & {"/proca.stats.v1.StatsService/WatchStats", "/grpc.health.v1.Health/Watch"}


def test_sync_runs_are_traced_with_what_they_did(
    start_traced: Callable[..., StatsServer],
    database_url: str,
    exporter: InMemorySpanExporter,
) -> None:
    # A campaign to count: an empty database gives a full calculation no row to read (the
    # change source's mark reads max(updated_at) only where an index keeps it cheap).
    with psycopg.connect(database_url, autocommit=True) as conn:
        data = ProcaData(conn)
        org = data.org()
        campaign = data.campaign(org)
        data.person(campaign, data.page(campaign, org), b"alice")
    server = start_traced(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    resync(server)
    runs = wait_for(lambda: named(exporter, SYNC_SPAN)[1:] and named(exporter, SYNC_SPAN))
    first, second = runs[:2]
    assert first.attributes["proca_stats.sync.kind"] == "full"
    assert second.attributes["proca_stats.sync.kind"] == "incremental"
    assert first.attributes["proca_stats.sync.campaigns"] == 1
    assert first.attributes["proca_stats.sync.rows_read"] >= 1
    assert first.status.status_code == StatusCode.UNSET


def test_a_failed_sync_run_is_an_error_span(
    start_traced: Callable[..., StatsServer],
    create_database: Callable[[], str],
    exporter: InMemorySpanExporter,
) -> None:
    start_traced(create_database())  # no tables: every run fails
    (failed, *_) = wait_for(lambda: named(exporter, SYNC_SPAN), what="a failed run")
    assert failed.status.status_code == StatusCode.ERROR
    assert 'relation "campaigns" does not exist' in (failed.status.description or "")


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"OTEL_SERVICE_NAME": "stats"},  # where spans go is not said
        {"OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"},
    ],
)
def test_no_tracing_unless_the_environment_asks(environ: dict[str, str]) -> None:
    assert Tracing.from_environment(environ) is None


def test_the_environment_names_the_exporter_and_the_service() -> None:
    tracing = Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console"})
    assert tracing is not None
    attributes = tracing.provider.resource.attributes
    assert attributes["service.name"] == "proca-stats"
    assert attributes["service.version"] == version()
    tracing.shutdown()


def test_otel_service_name_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK reads OTEL_SERVICE_NAME from the process's environment."""
    monkeypatch.setenv("OTEL_SERVICE_NAME", "stats-eu")
    tracing = Tracing.from_environment({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert tracing is not None
    assert tracing.provider.resource.attributes["service.name"] == "stats-eu"
    tracing.provider.shutdown()


def test_an_unknown_exporter_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"):
        Tracing.from_environment({"OTEL_TRACES_EXPORTER": "console,zipkin"})
