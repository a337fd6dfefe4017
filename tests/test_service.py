"""StatsService over a real gRPC connection to a server on a real database."""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql

from proca_stats.client import CampaignStats, StatsClient, Unavailable
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.grpc_service import SERVICE
from proca_stats.server.app import StatsServer
from proca_stats.server.database import init_schema
from tests.support.proca_data import ProcaData
from tests.support.servers import resync
from tests.support.waiting import wait_for

Serving = health_pb2.HealthCheckResponse


def as_dict(stats: CampaignStats) -> dict[str, object]:
    """The figures of a response, without the snapshot time."""
    return {
        "campaign_id": stats.campaign_id,
        "supporters": stats.supporters,
        "actions_by_type": dict(stats.actions_by_type),
        "supporters_by_area": dict(stats.supporters_by_area),
        "supporters_by_org": dict(stats.supporters_by_org),
    }


def test_unknown_campaign_has_zeros(stub: stats_pb2_grpc.StatsServiceStub) -> None:
    stats = stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=404)).stats
    assert as_dict(stats) == {
        "campaign_id": 404,
        "supporters": 0,
        "actions_by_type": {},
        "supporters_by_area": {},
        "supporters_by_org": {},
    }
    assert stats.HasField("synced_at")


def test_figures_come_from_the_database(
    db: ProcaData, start_server: Callable[..., StatsServer], database_url: str
) -> None:
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org, extra_supporters=3)
    db.person(campaign, page, b"alice", area="DE")
    server = start_server(database_url)
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        stats = wait_for(lambda: _ready_stats(client, campaign), what="figures")
    assert as_dict(stats) == {
        "campaign_id": campaign,
        "supporters": 4,
        "actions_by_type": {"signature": 1},
        "supporters_by_area": {"DE": 1},
        "supporters_by_org": {org: 4},
    }


def _ready_stats(client: StatsClient, campaign_id: int) -> CampaignStats | None:
    try:
        return client.get_stats(campaign_id)
    except Unavailable:
        return None


def test_increment_counts_a_new_supporter(client: StatsClient) -> None:
    client.increment(7, 2, "signature", area="DE", new_supporter=True)
    assert as_dict(client.get_stats(7)) == {
        "campaign_id": 7,
        "supporters": 1,
        "actions_by_type": {"signature": 1},
        "supporters_by_area": {"DE": 1},
        "supporters_by_org": {2: 1},
    }


def test_increment_by_an_existing_supporter_creates_keys_with_zero(client: StatsClient) -> None:
    client.increment(7, 2, "share", area="FR", new_supporter=False)
    client.increment(7, 2, "share", new_supporter=False)
    assert as_dict(client.get_stats(7)) == {
        "campaign_id": 7,
        "supporters": 0,
        "actions_by_type": {"share": 2},
        "supporters_by_area": {"FR": 0},
        "supporters_by_org": {2: 0},
    }


def test_increment_without_area_or_with_empty_area_touches_no_area(
    stub: stats_pb2_grpc.StatsServiceStub,
) -> None:
    stub.Increment(stats_pb2.IncrementRequest(campaign_id=3, org_id=1, action_type="a"))
    stub.Increment(
        stats_pb2.IncrementRequest(
            campaign_id=3, org_id=1, action_type="a", area="", new_supporter=True
        )
    )
    stats = stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=3)).stats
    assert dict(stats.supporters_by_area) == {}
    assert stats.supporters == 1
    assert dict(stats.supporters_by_org) == {1: 1}


def test_increment_adds_to_figures_from_the_database(
    db: ProcaData, database_url: str, start_server: Callable[..., StatsServer]
) -> None:
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    db.person(campaign, page, b"alice", area="DE")
    server = start_server(database_url)
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        client.increment(campaign, org, "signature", area="DE", new_supporter=True)
        client.increment(campaign, org + 1, "share", area="AT", new_supporter=False)
        assert as_dict(client.get_stats(campaign)) == {
            "campaign_id": campaign,
            "supporters": 2,
            "actions_by_type": {"signature": 2, "share": 1},
            "supporters_by_area": {"DE": 2, "AT": 0},
            "supporters_by_org": {org: 2, org + 1: 0},
        }


def test_concurrent_increments_lose_nothing(client: StatsClient) -> None:
    threads, per_thread = 8, 200

    def work(worker: int) -> None:
        for i in range(per_thread):
            client.increment(
                1, 1 + worker % 2, "signature", area=f"A{i % 4}", new_supporter=i % 2 == 0
            )

    pool = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    stats = client.get_stats(1)
    total = threads * per_thread
    assert stats.actions_by_type["signature"] == total
    assert stats.supporters == total // 2
    assert sum(stats.supporters_by_area.values()) == total // 2
    assert dict(stats.supporters_by_org) == {1: total // 4, 2: total // 4}


def test_a_recalculation_replaces_the_figures(
    server: StatsServer, client: StatsClient, db: ProcaData
) -> None:
    client.increment(99, 1, "signature", new_supporter=True)  # not in the database
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    db.person(campaign, page, b"alice", area="DE")
    resync(server)
    assert client.get_stats(99).supporters == 0
    assert as_dict(client.get_stats(campaign))["supporters_by_area"] == {"DE": 1}


def test_periodic_sync_picks_up_new_rows(
    db: ProcaData, database_url: str, start_server: Callable[..., StatsServer]
) -> None:
    server = start_server(database_url, sync_interval_ms=100)
    org = db.org()
    campaign = db.campaign(org)
    page = db.page(campaign, org)
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        wait_for(lambda: _ready_stats(client, campaign), what="the first calculation")
        db.person(campaign, page, b"alice")
        wait_for(lambda: client.get_stats(campaign).supporters == 1, what="the next sync")


def test_readers_during_calculations_always_see_a_whole_answer(
    db: ProcaData, database_url: str, start_server: Callable[..., StatsServer]
) -> None:
    """Rows flip between two states while syncs run back to back: each read is one of them."""
    org, other_org = db.org(), db.org("other")
    campaign = db.campaign(org)
    page, other_page = db.page(campaign, org), db.page(campaign, other_org)
    db.person(campaign, page, b"alice", area="DE")
    bob = db.supporter(campaign, other_page, b"bob", area="FR", status=2)
    db.action(campaign, other_page, bob, action_type="share")
    for n in range(20):  # more rows, so that a calculation takes a while
        db.person(campaign, page, f"p{n}".encode(), area="DE")
    state_a = {
        "campaign_id": campaign,
        "supporters": 21,
        "actions_by_type": {"signature": 21, "share": 1},
        "supporters_by_area": {"DE": 21},
        "supporters_by_org": {org: 21},
    }
    state_b = {
        **state_a,
        "supporters": 22,
        "supporters_by_area": {"DE": 21, "FR": 1},
        "supporters_by_org": {org: 21, other_org: 1},
    }
    server = start_server(database_url, sync_interval_ms=1)
    stop = threading.Event()

    def flip() -> None:
        status = 3
        while not stop.is_set():
            db.conn.execute(
                "UPDATE supporters SET processing_status = %s WHERE id = %s", (status, bob)
            )
            status = 5 - status  # 3 <-> 2
            stop.wait(0.01)

    flipper = threading.Thread(target=flip)
    flipper.start()
    seen = {"a": 0, "b": 0}
    try:
        with StatsClient(f"127.0.0.1:{server.port}") as client:
            wait_for(lambda: _ready_stats(client, campaign), what="the first calculation")

            def read_until_both_seen_often() -> bool:
                figures = as_dict(client.get_stats(campaign))
                assert figures in (state_a, state_b), figures
                seen["a" if figures == state_a else "b"] += 1
                return min(seen.values()) >= 5

            wait_for(read_until_both_seen_often, timeout=30, what="both states, five times each")
    finally:
        stop.set()
        flipper.join()


def test_unreachable_database_at_start_then_serving(
    postgres_url: str, create_database: Callable[[], str], start_server: Callable[..., StatsServer]
) -> None:
    url = create_database()
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(str(name))))
    server = start_server(url)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stub = stats_pb2_grpc.StatsServiceStub(channel)
        for service in ("", SERVICE.full_name):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == Serving.NOT_SERVING
        with pytest.raises(grpc.RpcError) as unavailable:
            stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=1))
        assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE
        # Increments are accepted before the first calculation.
        stub.Increment(stats_pb2.IncrementRequest(campaign_id=1, org_id=1, action_type="a"))

        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(str(name))))
        init_schema(url)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE.full_name), timeout=60)
        assert any(reply.status == Serving.SERVING for reply in watch)
        watch.cancel()
        assert stub.GetStats(stats_pb2.GetStatsRequest(campaign_id=1)).stats.HasField("synced_at")
