"""The `proca-stats` command as a person runs it: real processes, real signals, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.cli.commands import build_parser
from proca_stats.client import ResourceExhausted, StatsClient, Unavailable
from proca_stats.contract.v1.stats_pb2 import CampaignStats
from proca_stats.server.app import StatsServer
from proca_stats.server.fanout.payload import encode
from proca_stats.server.state.counters import Increment
from tests.support.certificates import Authority
from tests.support.database import postgres_folder
from tests.support.proca_data import ProcaData
from tests.support.servers import PROCA_STATS, clean_env, fanout_serving, free_port, is_serving
from tests.support.waiting import wait_for

Serving = health_pb2.HealthCheckResponse


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PROCA_STATS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env() if env is None else env,
        check=False,
    )


def assert_one_line_error(
    done: subprocess.CompletedProcess[str], *fragments: str, status: int = 1
) -> None:
    """One `proca-stats: error:` line holding ``fragments``, and exit ``status`` (2 for a
    command line argparse refuses): no traceback, no usage, no gRPC core log line."""
    assert done.returncode == status, done
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("proca-stats: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


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
    assert json.loads(got.stdout)["campaignId"] == "42"
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
        (("serve", "--max-watchers", "-1", "--database-url", "x"), ("--max-watchers",)),
        (("serve", "--slow-sync-interval", "-1", "--database-url", "x"), ("--slow-sync-interval",)),
        (("serve", "--full-sync-interval", "1h", "--database-url", "x"), ("--full-sync-interval",)),
        (("serve", "--change-overlap", "-2", "--database-url", "x"), ("--change-overlap",)),
        *(
            (
                ("serve", flag, str(2**31), "--database-url", "x"),
                (f"{flag}: must be <= {2**31 - 1}",),
            )
            for flag in (
                "--sync-interval",
                "--sync-timeout",
                "--slow-sync-interval",
                "--full-sync-interval",
                "--change-overlap",
                "--max-request-bytes",
            )
        ),
        (("get", "1", "--target", ""), ("--target: expected HOST:PORT",)),
        (
            ("increment", "--campaign", "1", "--org", "1", "--type", "x", "--target", " "),
            ("--target",),
        ),
        (("dump", "--database-url", "postgresql://127.0.0.1:1/nowhere"), ("127.0.0.1",)),
        (("dump", "--database-url", "not a url"), ("--database-url: not a PostgreSQL URL",)),
        (("db", "init", "--database-url", "postgresql://127.0.0.1:1/x"), ("127.0.0.1",)),
    ],
)
def test_mistakes_end_with_one_line(args: tuple[str, ...], fragments: tuple[str, ...]) -> None:
    assert_one_line_error(run_cli(*args), *fragments)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("get", "99999999999999999999"), ("CAMPAIGN_ID: expected a 64-bit whole number",)),
        (("get", "one"), ("CAMPAIGN_ID: expected a 64-bit whole number",)),
        (("increment", "--campaign", str(2**63), "--org", "1", "--type", "x"), ("--campaign: ",)),
        (("increment", "--campaign", "1", "--org", str(-(2**63) - 1), "--type", "x"), ("--org: ",)),
        (("increment", "--campaign", "1", "--org", "1", "--type", "x", "--action-id", "1e30"),
         ("--action-id: expected a 64-bit whole number",)),
        *((("get", "1", "--timeout", t), ("--timeout: expected seconds, a number > 0",))
          for t in ("nan", "inf", "0", "-1", "1e300", "soon")),
        *((("serve", f"--grace={g}"), ("--grace: expected seconds, a number >= 0",))
          for g in ("nan", "-inf", "-5", "1e300", "later")),
        (("serve", "--log-level", "LOUD"), ("--log-level: invalid choice: 'LOUD'",)),
        (("nonsense",), ("COMMAND: invalid choice",)),
    ],
)  # fmt: skip
def test_a_malformed_command_line_ends_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...]
) -> None:
    assert_one_line_error(run_cli(*args), *fragments, status=2)


def test_get_refused_by_the_server(server: StatsServer) -> None:
    done = run_cli("get", "0", "--target", f"127.0.0.1:{server.port}")
    assert_one_line_error(done, "campaign_id: must be > 0")


def test_other_mistakes_are_reported_while_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--sync-interval", "-5")
    assert_one_line_error(done, "--sync-interval: must be >= 0")


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


def test_log_level_after_the_command_is_applied(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, _ = serve("--database-url", database_url, "--log-level", "WARNING")
    process.terminate()
    assert process.wait(timeout=20) == 0
    _, stderr = process.communicate()
    assert " INFO " not in stderr  # "serving ...", "stopping ...", "stopped" are INFO


@pytest.mark.parametrize(
    ("argv", "level"),
    [
        (("dump",), "INFO"),
        (("--log-level", "DEBUG", "dump"), "DEBUG"),
        (("dump", "--log-level", "DEBUG"), "DEBUG"),
        (("serve", "--log-level", "ERROR"), "ERROR"),
        (("--log-level", "WARNING", "get", "1"), "WARNING"),
        (
            ("increment", "--log-level", "DEBUG", "--campaign", "1", "--org", "1", "--type", "x"),
            "DEBUG",
        ),
        (("db", "init", "--log-level", "DEBUG"), "DEBUG"),
        (("--log-level", "ERROR", "dump", "--log-level", "DEBUG"), "DEBUG"),
    ],
)
def test_log_level_is_taken_before_and_after_the_command(argv: tuple[str, ...], level: str) -> None:
    assert build_parser().parse_args(argv).log_level == level


def test_token_and_tls_options_of_the_client_commands(
    serve: Callable[..., tuple[subprocess.Popen[str], int]],
    database_url: str,
    tmp_path: Path,
) -> None:
    authority = Authority(tmp_path, "ca")
    issued = authority.issue("server", server=True)
    tokens = tmp_path / "tokens"
    tokens.write_text("secret-token\n")
    process, port = serve(
        "--database-url", database_url,
        "--tls-cert", str(issued.cert), "--tls-key", str(issued.key),
        "--token-file", str(tokens),
        ready=lambda port: is_serving(port, authority.cert.read_bytes()),
    )  # fmt: skip
    target = ("--target", f"127.0.0.1:{port}", "--tls-ca", str(authority.cert))
    increment = ("increment", "--campaign", "1", "--org", "1", "--type", "signature", *target)
    assert_one_line_error(run_cli(*increment), "authorization: Bearer")
    done = run_cli(*increment, "--new-supporter", "--token-file", str(tokens))
    assert done.returncode == 0, done.stderr
    got = run_cli("get", "1", *target)
    assert json.loads(got.stdout)["supporters"] == "1"
    process.terminate()
    assert process.wait(timeout=20) == 0


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (("--listen", "0.0.0.0:0"), ("--listen: 0.0.0.0 is reachable", "--insecure")),
        (("--tls-cert", "/nonexistent.crt"), ("--tls-cert and --tls-key",)),
        (("--tls-cert", "/no.crt", "--tls-key", "/no.key"), ("--tls-cert: cannot read /no.crt",)),
        (("--token-file", "/nonexistent"), ("--token-file: cannot read /nonexistent",)),
        (("--protect-reads",), ("--protect-reads: needs --token-file",)),
        (("--max-campaigns", "0"), ("--max-campaigns: must be >= 1",)),
        (("--max-action-ids", "0"), ("--max-action-ids: must be >= 1",)),
        (("--metrics-listen", "nowhere"), ("--metrics-listen: expected HOST:PORT",)),
        (("--fanout", "--fanout-channel", "Stats"), ("--fanout-channel: expected a PostgreSQL",)),
        (("--fanout-channel", "1st"), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--fanout-channel", "a-b"), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--fanout-channel", "c" * 64), ("--fanout-channel: expected a PostgreSQL identifier",)),
        (("--sync-database-url", "not a url"), ("--sync-database-url: not a PostgreSQL URL",)),
    ],
)
def test_serve_mistakes_end_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...], database_url: str
) -> None:
    done = run_cli("serve", "--database-url", database_url, *args)
    assert_one_line_error(done, *fragments)


@pytest.mark.parametrize(
    "args",
    [("--tls-cert", "/no.crt", "--tls-key", "/no.key"), ("--token-file", "/nonexistent")],
)
def test_serve_mistakes_end_before_the_embedded_postgres_starts(
    args: tuple[str, ...], tmp_path: Path
) -> None:
    done = run_cli("serve", "--data-dir", str(tmp_path), *args)
    assert_one_line_error(done, "cannot read /no")
    assert not (tmp_path / "pgdata").exists(), "started an embedded PostgreSQL for nothing"


@pytest.mark.parametrize(
    "command",
    [
        ("serve", "--listen", "127.0.0.1:0", "--database-url", "postgresql://127.0.0.1:1/x"),
        ("get", "1"),
    ],
)
def test_a_token_file_that_is_not_ascii_text_ends_with_one_line(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_bytes("secret-token\n".encode("utf-16"))  # as some editors save
    done = run_cli(*command, "--token-file", str(tokens))
    assert_one_line_error(done, f"--token-file: {tokens} line 1: a token must be printable ASCII")


@pytest.fixture
def pem_files(tmp_path: Path) -> dict[str, str]:
    """Paths of a CA, a server certificate and key, another key, the server key encrypted, and a PEM
    file of garbage."""
    authority = Authority(tmp_path, "ca")
    issued = authority.issue("server", server=True)
    other = authority.issue("other", server=True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(issued.key_pem, None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    paths = {"ca": authority.cert, "cert": issued.cert, "key": issued.key, "other_key": other.key}
    more = {"encrypted_key": encrypted, "garbage": garbage}
    return {name: str(path) for name, path in (paths | more).items()}


SERVE = ("serve", "--listen", "127.0.0.1:0", "--database-url", "postgresql://127.0.0.1:1/x")
GET = ("get", "1", "--target", "127.0.0.1:1", "--timeout", "2")
INCREMENT = ("increment", "--campaign", "1", "--org", "1", "--type", "x", "--target", "127.0.0.1:1")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{other_key}"),
         ("--tls-key: {other_key} is not the key of --tls-cert {cert}",)),
        ((*SERVE, "--tls-cert", "{garbage}", "--tls-key", "{key}"),
         ("--tls-cert: {garbage} holds no certificate",)),
        ((*SERVE, "--tls-cert", "{key}", "--tls-key", "{key}"),
         ("--tls-cert: {key} holds no certificate",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{garbage}"),
         ("--tls-key: {garbage} holds no private key",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{encrypted_key}"),
         ("--tls-key: {encrypted_key} is encrypted",)),
        ((*SERVE, "--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-client-ca", "{key}"),
         ("--tls-client-ca: {key} holds no certificate",)),
        ((*SERVE, "--tls-client-ca", "{ca}"), ("--tls-client-ca: needs --tls-cert and --tls-key",)),
        ((*GET, "--tls-cert", "{cert}"), ("--tls-cert and --tls-key",)),
        ((*INCREMENT, "--tls-key", "{key}"), ("--tls-cert and --tls-key",)),
        ((*GET, "--tls-ca", "{ca}", "--tls-cert", "{cert}", "--tls-key", "{other_key}"),
         ("--tls-key: {other_key} is not the key of --tls-cert {cert}",)),
        ((*GET, "--tls-ca", "{garbage}"), ("--tls-ca: {garbage} holds no certificate",)),
        ((*INCREMENT, "--tls-ca", "{key}"), ("--tls-ca: {key} holds no certificate",)),
    ],
)  # fmt: skip
def test_tls_files_that_do_not_fit_end_with_one_line(
    args: tuple[str, ...], fragments: tuple[str, ...], pem_files: dict[str, str]
) -> None:
    done = run_cli(*(arg.format(**pem_files) for arg in args))
    assert_one_line_error(done, *(fragment.format(**pem_files) for fragment in fragments))


@pytest.mark.parametrize(
    "command",
    [
        ("get", "1"),
        ("--log-level", "DEBUG", "get", "1"),
        ("increment", "--campaign", "1", "--org", "1", "--type", "x"),
    ],
)
def test_a_failing_call_prints_no_grpc_core_log_lines(command: tuple[str, ...]) -> None:
    env = clean_env()
    env.pop("GRPC_VERBOSITY", None)
    done = run_cli(*command, "--target", "dns:///", "--timeout", "2", env=env)
    assert_one_line_error(done, "'dns:///'")
