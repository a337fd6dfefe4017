"""The server commands as an operator runs them: `serve` in a real process with real signals
(on a given or an embedded PostgreSQL), `db init` and `dump` on a real database."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.client import ResourceExhausted, StatsClient, Unavailable
from proca_stats.contract.v1.stats_pb2 import CampaignStats, GetStatsResponse
from proca_stats.server.fanout.payload import encode
from proca_stats.server.state.counters import Increment
from tests.support.command_line import assert_one_line_error, run_cli
from tests.support.database import postgres_folder
from tests.support.proca_data import ProcaData
from tests.support.servers import clean_env, fanout_serving, is_serving
from tests.support.waiting import wait_for

Serving = health_pb2.HealthCheckResponse


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
    assert json.loads(done.stdout) == {"counted": True}
    got = run_cli("get", "1", "--target", target)
    assert got.returncode == 0, got.stderr
    stats = json_format.Parse(got.stdout, GetStatsResponse()).stats
    assert stats.supporters == 1
    assert dict(stats.supporters_by_org) == {2: 1}
    assert dict(stats.supporters_by_area) == {"DE": 1}
    assert dict(stats.actions_by_type) == {"signature": 1}
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0


def postmaster_pid(pgdata: Path) -> int:
    """The process id an embedded PostgreSQL's postmaster.pid names (its first line)."""
    return int((pgdata / "postmaster.pid").read_text().split()[0])


def running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie that nobody has reaped yet has ended."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def stopped(pgdata: Path, postmaster: int) -> bool:
    """True once the embedded PostgreSQL of ``pgdata`` was shut down: its pid file is gone (a
    clean shutdown's last step) and its postmaster ``postmaster`` has ended."""
    return not (pgdata / "postmaster.pid").exists() and not running(postmaster)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A --data-dir for embedded serves; a PostgreSQL they leave running is shut down after the
    test, so a failing test leaves no server behind."""
    with postgres_folder() as tmp:
        yield Path(tmp)
        pgdata = Path(tmp) / "pgdata"
        if (pgdata / "postmaster.pid").exists() and running(postmaster := postmaster_pid(pgdata)):
            os.kill(postmaster, signal.SIGINT)  # PostgreSQL's fast shutdown
            wait_for(lambda: not running(postmaster), what="the left PostgreSQL to stop")


def test_serve_without_database_runs_on_embedded_postgres(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], data_dir: Path
) -> None:
    process, port = serve("--data-dir", str(data_dir), "--fanout")
    assert fanout_serving(port)  # LISTEN/NOTIFY on the embedded PostgreSQL too
    got = run_cli("get", "42", "--target", f"127.0.0.1:{port}")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["stats"]["campaign_id"] == "42"
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert not (data_dir / "pgdata" / "postmaster.pid").exists(), "embedded PostgreSQL left running"


def test_environment_configures_serve(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve(env=clean_env(DATABASE_URL=database_url, SYNC_INTERVAL="0"))
    assert is_serving(port)
    process.terminate()
    assert process.wait(timeout=30) == 0


def test_fanout_from_the_environment_and_a_mistake_in_it(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    env = clean_env(
        DATABASE_URL=database_url, PROCA_STATS_FANOUT="1", PROCA_STATS_FANOUT_CHANNEL="replicas_b"
    )
    _, port = serve(env=env)
    wait_for(lambda: fanout_serving(port), what="the fan-out to listen")
    # Another replica's message on the configured channel is counted.
    (payload,) = encode("another", 0, 0.0, [Increment(5, 6, "signature", None, True)])
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_notify('replicas_b', %s)", (payload,))
    with StatsClient(f"127.0.0.1:{port}") as client:
        wait_for(lambda: client.get_stats(5).supporters == 1, what="the message to count")
    done = run_cli("serve", env=env | {"PROCA_STATS_FANOUT": "maybe"})
    assert_one_line_error(done, "PROCA_STATS_FANOUT: expected 1 or 0")


@pytest.mark.parametrize("configured", ["flag", "environment"])
def test_max_watchers_limits_watch_streams(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str, configured: str
) -> None:
    env = clean_env(DATABASE_URL=database_url, SYNC_INTERVAL="0")
    if configured == "flag":
        _, port = serve("--max-watchers", "0", env=env)
    else:
        _, port = serve(env=env | {"PROCA_STATS_MAX_WATCHERS": "0"})
    with (
        StatsClient(f"127.0.0.1:{port}") as client,
        client.watch_stats(1) as watch,
        pytest.raises(ResourceExhausted, match="0 watchers"),
    ):
        next(watch)


class HealthWatch:
    """A health Watch stream on a server process, its statuses collected by a thread."""

    def __init__(self, port: int) -> None:
        self.statuses: list[int] = []
        self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self._stream = health_pb2_grpc.HealthStub(self._channel).Watch(
            health_pb2.HealthCheckRequest()
        )
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        try:
            for reply in self._stream:
                self.statuses.append(reply.status)
        except grpc.RpcError:
            pass  # cancelled by us or ended by the server's shutdown

    def ended(self) -> bool:
        return not self._thread.is_alive()

    def close(self) -> None:
        self._stream.cancel()
        self._channel.close()


def refuses_new_rpcs(port: int) -> bool:
    """True when a new call to the server on ``port`` is refused (UNAVAILABLE)."""
    with StatsClient(f"127.0.0.1:{port}", timeout=2) as client:
        try:
            client.get_stats(1)
        except Unavailable:
            return True
    return False


def test_sigterm_says_not_serving_refuses_new_rpcs_and_exits_zero(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve("--database-url", database_url, "--grace", "30")
    watch = HealthWatch(port)  # an in-flight RPC
    wait_for(lambda: Serving.SERVING in watch.statuses, what="SERVING on the stream")
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: Serving.NOT_SERVING in watch.statuses, what="NOT_SERVING on the stream")
    wait_for(lambda: refuses_new_rpcs(port), what="new RPCs to be refused")
    assert process.poll() is None, "exited before its in-flight RPC ended or the grace ran out"
    watch.close()  # the last in-flight RPC ends: the server need not wait out its grace
    assert process.wait(timeout=20) == 0
    _, stderr = process.communicate()
    assert "stopped" in stderr


def test_in_flight_rpcs_are_cut_when_the_grace_runs_out(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve("--database-url", database_url, "--grace", "1")
    watch = HealthWatch(port)  # an in-flight RPC that never ends by itself
    wait_for(lambda: Serving.SERVING in watch.statuses, what="SERVING on the stream")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    wait_for(watch.ended, what="the server to end the stream")
    watch.close()


def test_a_second_signal_exits_at_once(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve("--database-url", database_url, "--grace", "600")
    watch = HealthWatch(port)  # an in-flight RPC the first signal waits for
    wait_for(lambda: Serving.SERVING in watch.statuses, what="SERVING on the stream")
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: Serving.NOT_SERVING in watch.statuses, what="NOT_SERVING on the stream")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 128 + signal.SIGTERM
    watch.close()


def test_second_signal_exits_at_once_and_stops_the_embedded_postgres(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], data_dir: Path
) -> None:
    process, port = serve("--data-dir", str(data_dir), "--grace", "600")
    pgdata = data_dir / "pgdata"
    postmaster = postmaster_pid(pgdata)
    watch = HealthWatch(port)  # an in-flight RPC the first signal waits for
    wait_for(lambda: Serving.SERVING in watch.statuses, what="SERVING on the stream")
    process.send_signal(signal.SIGTERM)
    wait_for(lambda: Serving.NOT_SERVING in watch.statuses, what="NOT_SERVING on the stream")
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 128 + signal.SIGINT  # long before the 600 s grace
    wait_for(lambda: stopped(pgdata, postmaster), what="the embedded PostgreSQL to stop")
    watch.close()


def test_a_serve_after_a_killed_one_stops_the_embedded_postgres(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], data_dir: Path
) -> None:
    killed, _ = serve("--data-dir", str(data_dir))
    pgdata = data_dir / "pgdata"
    postmaster = postmaster_pid(pgdata)
    killed.kill()
    killed.wait(timeout=20)
    assert running(postmaster), "nothing could stop PostgreSQL on SIGKILL"
    process, _ = serve("--data-dir", str(data_dir))
    assert postmaster_pid(pgdata) == postmaster  # joined the one left running
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    wait_for(lambda: stopped(pgdata, postmaster), what="the embedded PostgreSQL to stop")


def test_sigterm_while_the_embedded_postgres_starts_stops_it_and_exits_zero(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], data_dir: Path
) -> None:
    pgdata = data_dir / "pgdata"
    # The data directory appears first, seconds before initdb and pg_ctl are done.
    process, _ = serve("--data-dir", str(data_dir), ready=lambda port: pgdata.exists())
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    _, stderr = process.communicate()
    assert "embedded PostgreSQL running" in stderr  # the start went on to its end ...
    assert "stopped before serving" in stderr  # ... with the signal already received
    assert not (pgdata / "postmaster.pid").exists(), "embedded PostgreSQL left running"


def test_json_logs_one_object_per_line_and_nothing_per_rpc(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, port = serve("--database-url", database_url, "--log-format", "json")
    for _ in range(5):
        assert run_cli("get", "1", "--target", f"127.0.0.1:{port}").returncode == 0
    process.terminate()
    assert process.wait(timeout=20) == 0
    _, stderr = process.communicate()
    entries = [json.loads(line) for line in stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"].startswith("sync: full refresh, 0 campaigns") for e in entries)
    assert not any("GetStats" in e["message"] for e in entries)


@pytest.mark.parametrize("level", ["WARNING", "warning"])
def test_log_level_after_the_command_is_applied(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str, level: str
) -> None:
    process, _ = serve("--database-url", database_url, "--log-level", level)
    process.terminate()
    assert process.wait(timeout=20) == 0
    _, stderr = process.communicate()
    assert " INFO " not in stderr  # "serving ...", "stopping ...", "stopped" are INFO


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
    assert json.loads(lines[1])["supporters_by_org"] == {}  # empty maps are printed too
    assert all(stats.HasField("synced_at") for stats in parsed)


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
