"""The client commands, `get` and `increment`, calling real servers: their answers, their
TLS and token options, and a failing call ending in one line of their own."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from proca_stats.server.app import StatsServer
from tests.support.certificates import Authority
from tests.support.command_line import assert_one_line_error, run_cli
from tests.support.servers import clean_env, free_port, is_serving


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


def test_get_refused_by_the_server(server: StatsServer) -> None:
    done = run_cli("get", "0", "--target", f"127.0.0.1:{server.port}")
    assert_one_line_error(done, "campaign_id: must be > 0")


def test_get_from_a_server_that_is_not_there() -> None:
    done = run_cli("get", "1", "--target", f"127.0.0.1:{free_port()}", "--timeout", "2")
    assert_one_line_error(done)


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
    assert json.loads(got.stdout)["stats"]["supporters"] == "1"
    health = run_cli("health", *target)
    assert (health.returncode, health.stdout) == (0, '{"status": "SERVING"}\n')
    process.terminate()
    assert process.wait(timeout=20) == 0


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
