"""Real parts for every test: a PostgreSQL, a fresh database per test, servers on free ports
(in-process, or `proca-stats serve` processes).

The PostgreSQL is the one at TEST_DATABASE_URL (or DATABASE_URL) when set,
else an embedded one started for the test session.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proca_stats.client import StatsClient
from proca_stats.contract.v1 import stats_pb2_grpc
from proca_stats.contract.v1.stats_pb2 import CampaignStats
from proca_stats.server.app import FANOUT_SERVICE_NAME, StatsServer
from proca_stats.server.database import embedded_postgres, init_schema
from proca_stats.server.settings import ServeConfig
from proca_stats.server.state.counters import CampaignCounters
from tests.proca_data import ProcaData

T = TypeVar("T")


def wait_for(check: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def sample(server: StatsServer, name: str, **labels: str) -> float:
    """A metric's value on ``server``. A labelled series appears at its first change and
    counts 0 until then; an unlabelled one is exported from the start."""
    value = server.metrics.registry.get_sample_value(name, labels or None)
    if value is None:
        assert labels, f"{name} is not exported"
        return 0.0
    return value


def figures(stats: CampaignStats) -> CampaignCounters:
    """An answer's counters, comparable with the store's and a calculation's."""
    return CampaignCounters(
        stats.supporters,
        dict(stats.actions_by_type),
        dict(stats.supporters_by_area),
        dict(stats.supporters_by_org),
    )


def postgres_folder() -> tempfile.TemporaryDirectory[str]:
    """A folder for an embedded PostgreSQL's data.

    Not under pytest's tmp_path: run as root, the embedded PostgreSQL runs as another
    user, and every pytest session that starts on the machine makes the shared
    pytest-of-<user> folder private again, cutting that user off from the data
    directories of the sessions already running.
    """
    return tempfile.TemporaryDirectory(prefix="proca-stats-test-")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """An administrative URL of a running PostgreSQL."""
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with postgres_folder() as tmp:
        server = embedded_postgres(Path(tmp) / "pgdata", delete=True)
        yield server.get_uri()
        server.cleanup()


@pytest.fixture
def create_database(postgres_url: str) -> Iterator[Callable[[], str]]:
    """Creates empty databases that are dropped after the test; returns their URLs."""
    names: list[str] = []

    def create() -> str:
        name = f"proca_stats_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        names.append(name)
        return make_conninfo(postgres_url, dbname=name)

    yield create
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for name in names:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture
def database_url(create_database: Callable[[], str]) -> str:
    """A fresh database with Proca's schema."""
    url = create_database()
    init_schema(url)
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[ProcaData]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield ProcaData(conn)


@pytest.fixture
def start_server() -> Iterator[Callable[..., StatsServer]]:
    """Starts in-process servers on free ports; each is stopped after the test."""
    servers: list[StatsServer] = []

    def start(database_url: str, **config: object) -> StatsServer:
        settings = {"listen": "127.0.0.1:0", "sync_interval_ms": 0, "connect_timeout": 2.0}
        server = StatsServer(ServeConfig(**(settings | config)), database_url)  # type: ignore[arg-type]
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop(grace=0)


@pytest.fixture
def server(start_server: Callable[..., StatsServer], database_url: str) -> StatsServer:
    """A server over the test's database whose first calculation has succeeded."""
    running = start_server(database_url)
    wait_for(lambda: running.store.synced_at, what="the first calculation")
    return running


def resync(server: StatsServer) -> None:
    """Run a calculation now and wait until its result is in the store."""
    before = server.store.synced_at
    server.sync.request()
    wait_for(lambda: server.store.synced_at != before, what="a new calculation")


@pytest.fixture
def channel(server: StatsServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> stats_pb2_grpc.StatsServiceStub:
    return stats_pb2_grpc.StatsServiceStub(channel)


@pytest.fixture
def client(server: StatsServer) -> Iterator[StatsClient]:
    with StatsClient(f"127.0.0.1:{server.port}") as stats:
        yield stats


PROCA_STATS = str(Path(sys.executable).with_name("proca-stats"))


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any database or server setting of the caller's."""
    names = (
        "DATABASE_URL",
        "PROCA_STATS_DATABASE_URL",
        "TEST_DATABASE_URL",
        "SYNC_INTERVAL",
        "PROCA_STATS_SYNC_INTERVAL",
        "PROCA_STATS_LISTEN",
        "PROCA_STATS_MAX_WATCHERS",
    )
    env = {k: v for k, v in os.environ.items() if k not in names}
    return env | extra


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
    return is_serving(port, service=FANOUT_SERVICE_NAME)


@pytest.fixture
def serve() -> Iterator[Callable[..., tuple[subprocess.Popen[str], int]]]:
    """Starts `proca-stats serve` processes; waits until each is SERVING."""
    processes: list[subprocess.Popen[str]] = []

    def start(
        *args: str,
        env: dict[str, str] | None = None,
        ready: Callable[[int], bool] = is_serving,
    ) -> tuple[subprocess.Popen[str], int]:
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
            lambda: process.poll() is not None or ready(port),
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


def waiting_for_actions(conn: psycopg.Connection) -> bool:
    """Whether some session waits for a lock on the actions table."""
    row = conn.execute(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'actions'::regclass"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchone()
    return bool(row and row[0])


def lock_actions(database_url: str) -> psycopg.Connection:
    """A connection whose open transaction holds ``actions`` exclusively: a calculation
    waits behind it until the transaction ends."""
    conn = psycopg.connect(database_url)
    conn.execute("LOCK TABLE actions IN ACCESS EXCLUSIVE MODE")
    return conn


@contextmanager
def actions_locked(database_url: str) -> Iterator[psycopg.Connection]:
    """``lock_actions`` for a block; rows inserted on its connection commit at the end."""
    with lock_actions(database_url) as conn:  # commits and closes on leaving
        yield conn
