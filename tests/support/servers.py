"""Servers on real ports: the `proca-stats` command and its environment, free ports, health,
and a calculation on demand."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.server.api.health import FANOUT_SERVICE
from proca_stats.server.app import StatsServer
from tests.support.waiting import wait_for

PROCA_STATS = str(Path(sys.executable).with_name("proca-stats"))

# `serve` keeps a state file per database in the per-user state directory unless told
# otherwise: the commands a test runs find it under this folder of the test process (the
# default's own lookup, through XDG_STATE_HOME), so a test run leaves nothing in the home
# directory, and no test starts warm from another's figures.
STATE_HOME = tempfile.mkdtemp(prefix="proca-stats-test-state-")
atexit.register(shutil.rmtree, STATE_HOME, ignore_errors=True)


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any database or server setting of the caller's, its
    per-user state directory in ``STATE_HOME``."""
    names = (
        "DATABASE_URL",
        "PROCA_STATS_DATABASE_URL",
        "TEST_DATABASE_URL",
        "SYNC_INTERVAL",
        "PROCA_STATS_SYNC_INTERVAL",
        "PROCA_STATS_LISTEN",
        "PROCA_STATS_MAX_WATCHERS",
        "PROCA_STATS_STATE_DIR",
        "PROCA_STATS_NO_STATE",
    )
    env = {k: v for k, v in os.environ.items() if k not in names}
    return env | {"XDG_STATE_HOME": STATE_HOME} | extra


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_serving(port: int, root_certificates: bytes | None = None, service: str = "") -> bool:
    """True once the server on ``port`` answers health checks with SERVING (over TLS when
    ``root_certificates`` are given; for ``service``, else overall)."""
    target = f"127.0.0.1:{port}"
    with (
        grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
        if root_certificates
        else grpc.insecure_channel(target)
    ) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def fanout_serving(port: int) -> bool:
    """True while the server on ``port`` listens for the other replicas' Increments."""
    return is_serving(port, service=FANOUT_SERVICE)


def resync(server: StatsServer) -> None:
    """Run a calculation now and wait until its result is in the store."""
    before = server.store.synced_at
    server.sync.request()
    wait_for(lambda: server.store.synced_at != before, what="a new calculation")
