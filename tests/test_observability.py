"""Prometheus metrics on a real HTTP port, and the log lines a sync writes."""

from __future__ import annotations

import logging
import math
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from importlib import metadata

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proca_stats.client import InvalidArgument, StatsClient
from proca_stats.server.app import StatsServer
from proca_stats.server.state.limits import Limits
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for

GET_STATS = "proca.stats.v1.StatsService/GetStats"
INCREMENT = "proca.stats.v1.StatsService/Increment"
GRPC = ("protocol", "grpc")  # the gRPC port's calls (labels sorted: code, method, protocol)


def exposition(port: int, path: str = "/metrics") -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
        return str(reply.read().decode())


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, by name and sorted labels."""
    text = exposition(port)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def metered(start_server: Callable[..., StatsServer], database_url: str) -> StatsServer:
    server = start_server(database_url, metrics_listen="127.0.0.1:0")
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    return server


def test_rpcs_are_counted_by_method_and_code_and_timed(metered: StatsServer) -> None:
    with StatsClient(f"127.0.0.1:{metered.port}") as client:
        for _ in range(3):
            client.get_stats(1)
        client.increment(1, 1, "signature", new_supporter=True)
        with pytest.raises(InvalidArgument):
            client.get_stats(0)
    assert metered.metrics_port is not None
    samples = scrape(metered.metrics_port)
    assert samples["proca_stats_rpcs_total", (("code", "OK"), ("method", GET_STATS), GRPC)] == 3
    assert samples["proca_stats_rpcs_total", (("code", "OK"), ("method", INCREMENT), GRPC)] == 1
    refused = (("code", "INVALID_ARGUMENT"), ("method", GET_STATS), GRPC)
    assert samples["proca_stats_rpcs_total", refused] == 1
    assert samples["proca_stats_rpc_duration_seconds_count", (("method", GET_STATS), GRPC)] == 4
    assert all(name.startswith("proca_stats_") for name, _ in samples)


@pytest.mark.parametrize(
    "path", ["/", "/health", "/healthz", "/metrics/", "/metrics/x", "/favicon.ico"]
)
def test_the_metrics_port_answers_404_but_at_metrics(metered: StatsServer, path: str) -> None:
    assert metered.metrics_port is not None
    with pytest.raises(urllib.error.HTTPError) as refused:
        exposition(metered.metrics_port, path)
    assert refused.value.code == 404


def test_metrics_with_a_query_string_are_still_metrics(metered: StatsServer) -> None:
    """Prometheus' own filter, ``name[]=``, keeps working at /metrics."""
    assert metered.metrics_port is not None
    text = exposition(metered.metrics_port, "/metrics?name[]=proca_stats_campaigns")
    assert "proca_stats_campaigns 0.0" in text
    assert "proca_stats_sync_runs_total" not in text


def test_no_created_series_are_exported(metered: StatsServer) -> None:
    with StatsClient(f"127.0.0.1:{metered.port}") as client:
        client.get_stats(1)  # a labelled counter and histogram series exist now
    assert metered.metrics_port is not None
    text = exposition(metered.metrics_port)
    assert 'proca_stats_rpcs_total{code="OK"' in text
    assert "_created" not in text


def test_the_build_info_names_the_installed_version(metered: StatsServer) -> None:
    assert metered.metrics_port is not None
    samples = scrape(metered.metrics_port)
    version = metadata.version("proca-stats")
    assert samples["proca_stats_build_info", (("version", version),)] == 1


def test_sync_metrics(metered: StatsServer) -> None:
    resync(metered)
    port = metered.metrics_port
    assert port is not None
    # A refresh is counted as done once its figures are in and its snapshot is held.
    samples = wait_for(
        lambda: (
            (found := scrape(port))["proca_stats_sync_duration_seconds_count", ()] >= 2 and found
        ),
        what="the second refresh to be counted",
    )
    assert samples["proca_stats_sync_runs_total", ()] >= 2
    assert samples["proca_stats_sync_failures_total", ()] == 0
    assert samples["proca_stats_sync_duration_seconds_count", ()] >= 2
    since = samples["proca_stats_seconds_since_last_sync", ()]
    assert 0 <= since < 60
    assert samples["proca_stats_serving", ()] == 1
    metered.health.enter_graceful_shutdown()
    assert scrape(metered.metrics_port)["proca_stats_serving", ()] == 0


def test_the_campaigns_gauge_counts_the_campaigns_held(metered: StatsServer, db: ProcaData) -> None:
    port = metered.metrics_port
    assert port is not None

    def campaigns() -> float:
        return scrape(port)["proca_stats_campaigns", ()]

    assert campaigns() == 0  # the database had none at the first calculation
    org = db.org()
    for status in (0, 1, 2):  # every row of campaigns, closed and ignored ones too
        db.campaign(org, status=status)
    resync(metered)
    assert campaigns() == 3
    with StatsClient(f"127.0.0.1:{metered.port}") as client:
        client.increment(999, org, "signature", new_supporter=True)  # a campaign not seen yet
        assert campaigns() == 4
        client.increment(999, org, "signature", new_supporter=False)
    assert campaigns() == 4


def test_seconds_since_last_sync_is_nan_before_the_first(
    start_server: Callable[..., StatsServer], create_database: Callable[[], str]
) -> None:
    server = start_server(create_database(), metrics_listen="127.0.0.1:0")  # no schema: fails
    wait_for(lambda: server.metrics.registry.get_sample_value("proca_stats_sync_failures_total"))
    assert server.metrics_port is not None
    samples = scrape(server.metrics_port)
    assert math.isnan(samples["proca_stats_seconds_since_last_sync", ()])
    assert samples["proca_stats_sync_failures_total", ()] >= 1
    assert samples["proca_stats_serving", ()] == 0  # NOT_SERVING: an alert's to see


def test_calls_refused_before_a_handler_runs_are_counted(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_server(
        database_url, metrics_listen="127.0.0.1:0", limits=Limits(max_request_bytes=1024)
    )
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        for method, body, code in (
            (f"/{GET_STATS}", b"\x08" * 2048, grpc.StatusCode.RESOURCE_EXHAUSTED),
            ("/proca.stats.v1.StatsService/NoSuchMethod", b"", grpc.StatusCode.UNIMPLEMENTED),
        ):
            with pytest.raises(grpc.RpcError) as refused:
                channel.unary_unary(method)(body, timeout=5)
            assert refused.value.code() == code
    assert server.metrics_port is not None
    samples = scrape(server.metrics_port)
    # Too large: gRPC refuses it before any handler, so it is started but never answered.
    assert samples["proca_stats_rpcs_started_total", (("method", GET_STATS), GRPC)] == 1
    assert ("proca_stats_rpcs_total", (("code", "OK"), ("method", GET_STATS), GRPC)) not in samples
    unknown = (("code", "UNIMPLEMENTED"), ("method", "unknown"), GRPC)
    assert samples["proca_stats_rpcs_total", unknown] == 1


def test_the_sync_log_line_says_what_was_read(
    server: StatsServer, db: ProcaData, caplog: pytest.LogCaptureFixture
) -> None:
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    for n in range(3):
        db.person(campaign, page, f"fp{n}".encode())
    with caplog.at_level(logging.INFO, logger="proca_stats.server.sync.worker"):
        resync(server)  # the line is logged once the figures are in: wait for it
        line = wait_for(
            lambda: next(
                (m for r in caplog.records if (m := r.getMessage()).startswith("sync:")), None
            ),
            what="the sync's log line",
        )
    found = re.search(r"1 campaigns in [0-9.]+ s, (\d+) rows read", line)
    assert found, line
    # At least: the campaign, its page, its supporters' row and its actions' row.
    assert int(found.group(1)) >= 4
