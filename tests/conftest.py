"""Real parts for every test: a PostgreSQL, a fresh database per test, servers on free ports
(in-process, or `proca-stats serve` processes).

The PostgreSQL is the one at TEST_DATABASE_URL (or DATABASE_URL) when set,
else an embedded one started for the test session. Only fixtures live here;
what tests call themselves is in tests/support.
"""

from __future__ import annotations

import functools
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from proca_stats.client import StatsClient
from proca_stats.contract.v1 import stats_pb2_grpc
from proca_stats.server.app import StatsServer
from proca_stats.server.database import embedded_postgres, init_schema
from proca_stats.server.settings import ServeConfig
from tests.support.database import Refreshing, postgres_folder, refresher_on
from tests.support.logical_postgres import drop_database, fresh_database, logical_postgres
from tests.support.proca_data import ProcaData
from tests.support.servers import PROCA_STATS, clean_env, free_port, is_serving
from tests.support.waiting import wait_for


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
def logical_url() -> Iterator[str]:
    """A fresh database with Proca's schema in a PostgreSQL with wal_level logical."""
    url, name = fresh_database()
    yield url
    drop_database(logical_postgres().url, name)


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


@pytest.fixture
def refreshing(database_url: str) -> Refreshing:
    """Opens refreshers over the test's database (see ``refresher_on``)."""
    return functools.partial(refresher_on, database_url)
