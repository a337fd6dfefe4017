"""The `proca-stats` command as a person runs it: real processes, real signals, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.client.v1.stats_pb2 import CampaignStats
from proca_stats.server.app import StatsServer
from tests.conftest import wait_for
from tests.proca_data import ProcaData

PROCA_STATS = str(Path(sys.executable).with_name("proca-stats"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any database or server setting of the caller's."""
    names = ("DATABASE_URL", "TEST_DATABASE_URL", "SYNC_INTERVAL", "PROCA_STATS_LISTEN")
    env = {k: v for k, v in os.environ.items() if k not in names}
    return env | extra


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROCA_STATS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env() if env is None else env,
        check=False,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("proca-stats: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """Starts `proca-stats serve` processes; waits until each is SERVING."""
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], int]:
        port = free_port()
        process = subprocess.Popen(
            [PROCA_STATS, "serve", "--listen", f"127.0.0.1:{port}", *args],
            env=clean_env() if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        processes.append(process)
        wait_for(
            lambda: process.poll() is not None or is_serving(port),
            timeout=60,
            what="the server to be SERVING",
        )
        assert process.poll() is None, process.communicate()
        return process, port

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_serve_get_increment_and_stop_on_sigterm(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve("--database-url", database_url)
    target = f"127.0.0.1:{port}"
    done = run_cli(
        "increment", "--campaign", "1", "--org", "2", "--type", "signature",
        "--area", "DE", "--new-supporter", "--target", target,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = run_cli("get", "1", "--target", target)
    assert got.returncode == 0, got.stderr
    stats = json_format.Parse(got.stdout, CampaignStats())
    assert stats.supporters == 1
    assert dict(stats.supporters_by_org) == {2: 1}
    assert dict(stats.supporters_by_area) == {"DE": 1}
    assert dict(stats.actions_by_type) == {"signature": 1}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def test_serve_without_database_runs_on_embedded_postgres(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], tmp_path: Path
) -> None:
    process, port = serve("--data-dir", str(tmp_path))
    got = run_cli("get", "42", "--target", f"127.0.0.1:{port}")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["campaignId"] == "42"
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not (tmp_path / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL left running"


def test_environment_configures_serve(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve(env=clean_env(DATABASE_URL=database_url, SYNC_INTERVAL="0"))
    assert is_serving(port)
    process.terminate()
    assert process.wait(timeout=30) == 0


def test_dump_prints_one_json_line_per_campaign(db: ProcaData, database_url: str) -> None:
    org = db.org()
    campaign = db.campaign(org)
    empty = db.campaign(org)
    page = db.page(campaign, org, extra_supporters=2)
    db.person(campaign, page, b"alice", area="DE")
    done = run_cli("dump", "--database-url", database_url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    parsed = [json_format.Parse(line, CampaignStats()) for line in lines]
    assert [stats.campaign_id for stats in parsed] == [campaign, empty]
    assert parsed[0].supporters == 3
    assert dict(parsed[0].supporters_by_org) == {org: 3}
    assert dict(parsed[0].supporters_by_area) == {"DE": 1}
    assert parsed[1].supporters == 0
    assert json.loads(lines[1])["supportersByOrg"] == {}  # empty maps are printed too
    assert all(stats.HasField("synced_at") for stats in parsed)


def test_flags_win_over_the_environment(db: ProcaData, database_url: str) -> None:
    db.campaign()
    env = clean_env(DATABASE_URL="postgresql://127.0.0.1:1/nowhere")
    done = run_cli("dump", "--database-url", database_url, env=env)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1


def test_db_init_creates_the_tables_and_is_idempotent(
    create_database: Callable[[], str],
) -> None:
    url = create_database()
    for _ in range(2):
        done = run_cli("db", "init", "--database-url", url)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(url) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            )
        }
    assert tables == {"orgs", "campaigns", "action_pages", "supporters", "actions"}


def test_db_init_creates_the_recommended_indexes_only_when_asked(
    create_database: Callable[[], str],
) -> None:
    url = create_database()
    query = "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%updated_at%'"
    done = run_cli("db", "init", "--database-url", url)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute(query).fetchall() == []
    for _ in range(2):
        done = run_cli("db", "init", "--recommended-indexes", "--database-url", url)
        assert done.returncode == 0, done.stderr
    with psycopg.connect(url) as conn:
        indexes = {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes")}
    assert {
        "actions_updated_at_index",
        "supporters_updated_at_index",
        "actions_supporter_id_index",
        "actions_campaign_id_index",
    } <= indexes


def test_increment_with_an_action_id_counts_once(server: StatsServer) -> None:
    target = ("--target", f"127.0.0.1:{server.port}")
    for _ in range(2):
        done = run_cli(
            "increment", "--campaign", "5", "--org", "1", "--type", "x", "--new-supporter",
            "--action-id", "42", *target,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert server.store.get(5)[0].supporters == 1


def test_increment_refused_by_the_server(server: StatsServer) -> None:
    done = run_cli(
        "increment", "--campaign", "0", "--org", "1", "--type", "x",
        "--target", f"127.0.0.1:{server.port}",
    )  # fmt: skip
    assert_one_line_error(done, "campaign_id: must be > 0")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("serve", "--listen", "nonsense"), ("--listen", "HOST:PORT")),
        (("serve", "--listen", "127.0.0.1:99999"), ("--listen",)),
        (("serve", "--sync-interval", "-5", "--database-url", "x"), ("--sync-interval",)),
        (("serve", "--sync-interval", "soon", "--database-url", "x"), ("--sync-interval",)),
        (("serve", "--slow-sync-interval", "-1", "--database-url", "x"), ("--slow-sync-interval",)),
        (("serve", "--full-sync-interval", "1h", "--database-url", "x"), ("--full-sync-interval",)),
        (("serve", "--change-overlap", "-2", "--database-url", "x"), ("--change-overlap",)),
        (("dump", "--database-url", "postgresql://127.0.0.1:1/nowhere"), ("127.0.0.1",)),
        (("dump", "--database-url", "not a url"), ("--database-url: not a PostgreSQL URL",)),
        (("db", "init", "--database-url", "postgresql://127.0.0.1:1/x"), ("127.0.0.1",)),
    ],
)
def test_mistakes_end_with_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), *fragments)


def test_port_in_use_ends_with_one_line(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--database-url", database_url)
    assert_one_line_error(done, f"cannot listen on 127.0.0.1:{port}")


def test_get_from_a_server_that_is_not_there() -> None:
    done = run_cli("get", "1", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert_one_line_error(done)
