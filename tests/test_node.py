"""The Node.js example client (@grpc/grpc-js, @grpc/proto-loader) against a live server.

It loads protos/ directly, as users who copy examples/node/ do. Its packages
come from `npm ci --prefix examples/node`, part of the README's test command.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from proca_stats.client import StatsClient
from proca_stats.server.app import StatsServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
INVALID_ARGUMENT, CANCELLED = 3, 1  # grpc.status codes
BIG_ORG = 2**53 + 1


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (Node.js 18 or later is needed)")
    if not (EXAMPLE / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("the example's packages are missing: npm ci --prefix examples/node")
    return subprocess.run(
        [node, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_every_rpc_from_node(server: StatsServer, client: StatsClient) -> None:
    client.increment(12, 3, "share", new_supporter=True)
    client.increment(12, BIG_ORG, "share")  # a key JavaScript numbers cannot hold
    done = run_node("tests/node/exercise.js", f"127.0.0.1:{server.port}", "12")
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)

    assert seen["counted"] == [True, False]  # the same action_id counts once
    assert seen["watchFirst"]["supporters"] == "1"  # int64 as a string
    assert seen["watchFirst"]["supporters_by_org"] == {"3": "1", str(BIG_ORG): "0"}
    after = seen["watchAfterIncrement"]
    assert after["supporters"] == "2"
    assert after["supporters_by_area"] == {"DE": "1"}
    assert after["supporters_by_org"] == {"3": "1", "7": "1", str(BIG_ORG): "0"}
    assert seen["getStats"] == after
    batch = seen["batchGetStats"]
    assert [stats["campaign_id"] for stats in batch] == ["12", "404", "12"]
    assert [stats["supporters"] for stats in batch] == ["2", "0", "2"]

    assert seen["badIncrement"] == {
        "code": INVALID_ARGUMENT,
        "details": "org_id: must be > 0, got 0",
    }
    assert seen["badBatch"] == {
        "code": INVALID_ARGUMENT,
        "details": "campaign_ids[1]: must be > 0, got -1",
    }
    assert seen["badWatch"]["code"] == INVALID_ARGUMENT
    assert seen["badWatch"]["details"].startswith("min_interval_ms: ")
    assert seen["watchCancelledWith"] == [CANCELLED]
    assert client.get_stats(12).supporters == 2  # Node's increment reached the server
    assert len(server.watchers) == 0


def test_the_example_runs(server: StatsServer) -> None:
    done = run_node(str(EXAMPLE / "example.js"), f"127.0.0.1:{server.port}", "21")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["Increment counted: true", "Increment again counted: false"]
    assert "BatchGetStats: 1 1" in lines
    assert lines[-1] == "WatchStats: 1"
