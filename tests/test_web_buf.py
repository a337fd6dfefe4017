"""The real buf (npm's @bufbuild/buf) calling the HTTP port with Connect and gRPC-Web, over
HTTP/1.1 and h2c, with the schema from protos/ as the README shows."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from proca_stats.server.api.auth import load_tokens
from proca_stats.server.app import StatsServer
from tests.support.waiting import wait_for
from tests.support.web import SERVICE, port_of, start_web
from tests.test_buf import BUF, PROTOS

TOKEN = "buf-token"
INCREMENT = {"campaign_id": 7, "org_id": 2, "action_type": "signature", "new_supporter": True}


def command(
    server: StatsServer, protocol: str, rpc: str, message: dict[str, object], *flags: str
) -> list[str]:
    if not BUF.exists():
        pytest.fail("buf is missing: run npm ci in the project's root")
    url = f"http://127.0.0.1:{port_of(server)}{SERVICE}/{rpc}"
    schema = ("--schema", str(PROTOS), "--protocol", protocol)
    return [str(BUF), "curl", *schema, *flags, "-d", json.dumps(message), url]


def buf_curl(
    server: StatsServer, protocol: str, rpc: str, message: dict[str, object], *flags: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(server, protocol, rpc, message, *flags),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def watched_until_shutdown(server: StatsServer, protocol: str, *flags: str) -> str:
    """What buf prints of a WatchStats stream, which ends only when the server stops (so it
    is stopped once the stream is open); buf must then exit 0, as after any stream that
    ended well."""
    watching = subprocess.Popen(
        command(server, protocol, "WatchStats", {"campaign_id": 7}, *flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: len(server.watchers) == 1, what="the stream to open")
        server.stop(grace=5)
        stdout, stderr = watching.communicate(timeout=30)
    finally:
        if watching.poll() is None:
            watching.kill()
            watching.communicate()
    assert watching.returncode == 0, stderr
    return stdout


@pytest.fixture
def web(start_server: Callable[..., StatsServer], database_url: str, tmp_path: Path) -> StatsServer:
    (tmp_path / "tokens").write_text(TOKEN + "\n")
    return start_web(start_server, database_url, tokens=load_tokens(tmp_path / "tokens"))


@pytest.mark.parametrize("protocol", ["connect", "grpcweb"])
@pytest.mark.parametrize("http2", [False, True])
def test_buf_curl_calls_every_rpc(web: StatsServer, protocol: str, http2: bool) -> None:
    flags = ("--http2-prior-knowledge",) if http2 else ()
    refused = buf_curl(web, protocol, "Increment", INCREMENT, *flags)
    assert refused.returncode != 0
    assert json.loads(refused.stderr)["code"] == "unauthenticated"
    counted = buf_curl(
        web, protocol, "Increment", INCREMENT, *flags, "-H", f"authorization: Bearer {TOKEN}"
    )
    assert counted.returncode == 0, counted.stderr
    assert json.loads(counted.stdout) == {"counted": True}

    got = buf_curl(web, protocol, "GetStats", {"campaign_id": 7}, *flags)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["stats"]["supporters"] == "1"
    batch = buf_curl(web, protocol, "BatchGetStats", {"campaign_ids": [7, 8]}, *flags)
    assert [s["campaignId"] for s in json.loads(batch.stdout)["stats"]] == ["7", "8"]

    bad = buf_curl(web, protocol, "GetStats", {"campaign_id": -1}, *flags)
    assert bad.returncode != 0
    assert json.loads(bad.stderr) == {
        "code": "invalid_argument",
        "message": "campaign_id: must be > 0, got -1",
    }

    printed = watched_until_shutdown(web, protocol, *flags)
    assert json.loads(printed)["stats"] == json.loads(got.stdout)["stats"]
