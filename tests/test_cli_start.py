"""The command line's first minutes, as real processes: --version, the health probe, the demo
data and `serve --demo`, JSON with the proto's field names, and a database that cannot be used
ending `serve` at start in one line."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from proca_stats.server.app import StatsServer
from tests.support.command_line import assert_one_line_error, run_cli
from tests.support.database import actions_locked, waiting_for_actions
from tests.support.servers import PROCA_STATS, clean_env, free_port
from tests.support.waiting import wait_for
from tests.test_cli_serve import data_dir

__all__ = ["data_dir"]  # the fixture, shared with test_cli

Serve = Callable[..., tuple[subprocess.Popen[str], int]]


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version(flag: str) -> None:
    done = run_cli(flag)
    assert (done.returncode, done.stdout) == (0, f"proca-stats {metadata.version('proca-stats')}\n")


def test_serve_logs_the_version_at_start(serve: Serve, database_url: str) -> None:
    process, _ = serve("--database-url", database_url)
    process.terminate()
    _, stderr = process.communicate(timeout=30)
    assert f"proca-stats {metadata.version('proca-stats')}" in stderr.splitlines()[0]


def test_health_of_a_serving_server(server: StatsServer) -> None:
    target = ("--target", f"127.0.0.1:{server.port}")
    for service in ((), ("--service", "proca.stats.v1.StatsService")):
        done = run_cli("health", *target, *service)
        assert (done.returncode, done.stdout, done.stderr) == (0, '{"status": "SERVING"}\n', "")


def test_health_before_the_first_calculation(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    with actions_locked(database_url) as lock:
        server = start_server(database_url)
        wait_for(lambda: waiting_for_actions(lock), what="the first calculation to wait")
        done = run_cli("health", "--target", f"127.0.0.1:{server.port}")
    assert (done.returncode, done.stdout, done.stderr) == (1, '{"status": "NOT_SERVING"}\n', "")


def test_health_of_an_unknown_service_or_a_missing_server(server: StatsServer) -> None:
    done = run_cli("health", "--target", f"127.0.0.1:{server.port}", "--service", "nope")
    assert_one_line_error(done, "--service: the server knows no service 'nope'")
    done = run_cli("health", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert_one_line_error(done)


def test_increment_and_dump_print_the_protos_field_names(server: StatsServer) -> None:
    target = ("--target", f"127.0.0.1:{server.port}")
    increment = ("increment", "--campaign", "3", "--org", "4", "--type", "x", "--action-id", "9")
    assert run_cli(*increment, *target).stdout == '{"counted": true}\n'
    assert run_cli(*increment, *target).stdout == '{"counted": false}\n'  # counted already
    got = json.loads(run_cli("get", "3", *target).stdout)
    assert set(got) == {"stats"}  # as grpcurl prints a GetStatsResponse
    assert set(got["stats"]) == {
        "campaign_id",
        "supporters",
        "actions_by_type",
        "supporters_by_area",
        "supporters_by_org",
        "synced_at",
    }
    assert got["stats"]["supporters_by_org"] == {"4": "0"}


def test_a_reader_that_goes_away_is_no_error(server: StatsServer) -> None:
    """`proca-stats get 1 | head -1` says nothing about the pipe it could not finish writing
    to. Here the reader, `true`, is gone before the answer comes, so every write fails."""
    done = subprocess.run(
        f"{PROCA_STATS} get 1 --target 127.0.0.1:{server.port} | true",
        shell=True, capture_output=True, text=True, timeout=60, env=clean_env(), check=False,
    )  # fmt: skip
    assert done.stderr == ""


def test_db_demo_loads_once_unless_forced(create_database: Callable[[], str]) -> None:
    url = create_database()
    done = run_cli("db", "demo", "--database-url", url)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "demo loaded: 6 campaigns, 3150 supporters, 3945 actions\n"
    assert_one_line_error(
        run_cli("db", "demo", "--database-url", url), "holds Proca rows already; --force"
    )
    assert run_cli("db", "demo", "--force", "--database-url", url).returncode == 0
    dumped = run_cli("dump", "--database-url", url).stdout.splitlines()
    assert len(dumped) == 12


def supporters(port: int, campaign_id: int) -> int:
    got = run_cli("get", str(campaign_id), "--target", f"127.0.0.1:{port}")
    assert got.returncode == 0, got.stderr
    return int(json.loads(got.stdout)["stats"]["supporters"])


def synced_at(port: int) -> str:
    got = run_cli("get", "1", "--target", f"127.0.0.1:{port}")
    return str(json.loads(got.stdout)["stats"]["synced_at"])


def live_total(port: int) -> int:
    """The supporters of the demo's three live campaigns, the ones the trickle acts on."""
    return sum(supporters(port, campaign_id) for campaign_id in (1, 2, 3))


def test_serve_demo_counters_move_and_survive_syncs(serve: Serve, data_dir: Path) -> None:
    """What a newcomer sees: the demo's figures, growing, and still there after syncs and
    after a restart."""
    process, port = serve("--demo", "--data-dir", str(data_dir), "--sync-interval", "1000")
    before = live_total(port)
    assert before >= 1147 + 718 + 396  # the data set's figures, or more already
    wait_for(lambda: live_total(port) > before, timeout=60, what="the counters to move")
    seen, seen_at = live_total(port), synced_at(port)
    wait_for(lambda: synced_at(port) != seen_at, timeout=60, what="a sync after that")
    assert live_total(port) >= seen  # the sync confirmed them: the actions are stored
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    _, stderr = process.communicate()
    assert "demo: loaded 6 campaigns, 3150 supporters, 3945 actions" in stderr
    # Again on the same data directory: kept, not loaded a second time, nothing lost.
    process, port = serve("--demo", "--data-dir", str(data_dir))
    assert live_total(port) >= seen
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert "holds rows already (an earlier demo's): kept as they are" in stderr


def test_serve_demo_is_for_the_embedded_database(database_url: str) -> None:
    done = run_cli("serve", "--demo", "--database-url", database_url)
    assert_one_line_error(done, "--demo: runs on the embedded database")


@pytest.mark.parametrize(
    ("flag", "fragment"),
    [("--database-url", "does not exist"), ("--sync-database-url", "does not exist")],
)
def test_serve_ends_at_start_for_a_database_that_does_not_exist(
    database_url: str, flag: str, fragment: str
) -> None:
    missing = make_conninfo(database_url, dbname="proca_stats_no_such_database")
    urls = {"--database-url": database_url, flag: missing}
    args = [word for pair in urls.items() for word in pair]
    done = run_cli("serve", "--listen", f"127.0.0.1:{free_port()}", *args)
    assert_one_line_error(done, f"{flag}: ", fragment)


def test_serve_ends_at_start_for_a_database_without_procas_tables(
    create_database: Callable[[], str],
) -> None:
    done = run_cli("serve", "--listen", "127.0.0.1:0", "--database-url", create_database())
    assert_one_line_error(done, "--database-url: missing tables campaigns", "db init")


def test_serve_ends_at_start_for_a_host_that_does_not_resolve() -> None:
    url = "postgresql://postgres@proca-stats.invalid/proca"
    done = run_cli("serve", "--listen", "127.0.0.1:0", "--database-url", url)
    assert_one_line_error(done, "--database-url: ", "proca-stats.invalid")


def test_a_malformed_database_url_is_one_well_formed_line() -> None:
    for command in (("serve", "--listen", "127.0.0.1:0"), ("dump",), ("db", "init")):
        done = run_cli(*command, "--database-url", "not-a-url")
        assert_one_line_error(done, "--database-url: not a PostgreSQL URL (missing")
        assert done.stderr.rstrip().endswith("in connection info string)"), done.stderr


def accepts(port: int) -> bool:
    """Whether the gRPC port takes connections: the server is up, ready or not."""
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_database_that_cannot_be_reached_yet_is_waited_for(serve: Serve) -> None:
    """Refused connections can pass: `serve` starts, not ready, and says why."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/proca"
    process, _ = serve("--database-url", url, ready=accepts)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    _, stderr = process.communicate()
    assert "--database-url: connection to server" in stderr
    assert "Connection refused; serving without figures until it can be read" in stderr
