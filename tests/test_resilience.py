"""The sync survives the database: stopped under load, mid-calculation, slow, and never doubled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from proca_stats.client import StatsClient, StatsError, Unavailable
from proca_stats.server.app import StatsServer
from proca_stats.server.database import init_schema
from tests.support.controlled_postgres import ControlledPostgres
from tests.support.database import lock_actions, postgres_folder
from tests.support.metrics import sample
from tests.support.proca_data import ProcaData
from tests.support.servers import is_serving
from tests.support.waiting import wait_for


@pytest.fixture
def own_postgres() -> Iterator[ControlledPostgres]:
    with postgres_folder() as folder:
        postgres = ControlledPostgres(Path(folder))
        init_schema(postgres.url)
        yield postgres
        postgres.close()


def one_campaign(url: str) -> int:
    """A campaign with one counted supporter and 5 extra ones: 6 supporters."""
    with psycopg.connect(url, autocommit=True) as conn:
        db = ProcaData(conn)
        org = db.org()
        campaign = db.campaign(org)
        page = db.page(campaign, org, extra_supporters=5)
        db.person(campaign, page, b"alice", area="DE")
        return campaign


def failures(server: StatsServer) -> float:
    return sample(server, "proca_stats_sync_failures_total")


def ready(server: StatsServer) -> StatsServer:
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    return server


class Load:
    """Increments and GetStats from two threads until stopped; any failed call is kept."""

    def __init__(self, port: int, campaign: int) -> None:
        self.errors: list[Exception] = []
        self.calls = 0
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(port, campaign, write))
            for write in (True, False)
        ]

    def _run(self, port: int, campaign: int, write: bool) -> None:
        with StatsClient(f"127.0.0.1:{port}", timeout=5) as client:
            while not self._stop.is_set():
                try:
                    if write:
                        client.increment(999, 1, "signature", new_supporter=True)
                    else:
                        assert client.get_stats(campaign).supporters >= 6
                    self.calls += 1
                except (StatsError, AssertionError) as error:
                    self.errors.append(error)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


def test_database_stopped_and_restarted_under_load(
    own_postgres: ControlledPostgres, start_server: Callable[..., StatsServer]
) -> None:
    campaign = one_campaign(own_postgres.url)
    server = ready(start_server(own_postgres.url, sync_interval_ms=100, connect_timeout=1.0))
    with Load(server.port, campaign) as load:
        wait_for(lambda: load.calls > 50, what="calls before the stop")
        own_postgres.stop()
        wait_for(lambda: failures(server) >= 2, what="failed syncs to be counted")
        calls_while_down = load.calls
        wait_for(
            lambda: load.calls > calls_while_down + 50, what="calls while the database is down"
        )
        with StatsClient(f"127.0.0.1:{server.port}") as client:
            assert client.get_stats(campaign).supporters == 6  # the last figures, not wiped
        own_postgres.start()
        restarted_at = own_postgres.now()
        wait_for(
            lambda: (synced := server.store.synced_at) is not None and synced > restarted_at,
            timeout=60,
            what="a sync after the restart",
        )
    assert load.errors == []
    assert server.sync.is_alive()


def test_seconds_since_last_sync_grows_while_the_database_is_down(
    own_postgres: ControlledPostgres, start_server: Callable[..., StatsServer]
) -> None:
    """The gauge an alert watches counts from the last success, not from the last attempt."""
    one_campaign(own_postgres.url)
    server = ready(start_server(own_postgres.url, sync_interval_ms=100, connect_timeout=1.0))

    def since() -> float:
        return sample(server, "proca_stats_seconds_since_last_sync")

    own_postgres.stop()
    wait_for(lambda: failures(server) >= 1, what="a failed sync")
    failing_since = time.monotonic()  # every success came before this
    first_reading = since()
    failed = failures(server)
    wait_for(lambda: failures(server) >= failed + 2, timeout=30, what="two more failed syncs")
    outage = time.monotonic() - failing_since
    reading = since()
    assert reading > first_reading
    assert reading >= outage  # the failures in between did not reset it
    own_postgres.start()
    wait_for(lambda: since() < outage, timeout=60, what="a sync after the restart")


def calculations_waiting(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE application_name = 'proca-stats' AND wait_event_type = 'Lock'"
            " AND datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def test_database_stopped_in_the_middle_of_a_calculation(
    own_postgres: ControlledPostgres,
    start_server: Callable[..., StatsServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    campaign = one_campaign(own_postgres.url)
    server = ready(start_server(own_postgres.url, connect_timeout=1.0))
    first = server.store.synced_at
    lock = lock_actions(own_postgres.url)
    server.sync.request(full=True)  # a refresh that finds nothing changed reads no table
    wait_for(lambda: calculations_waiting(own_postgres.url) == 1, what="a blocked calculation")
    own_postgres.stop()
    lock.close()
    wait_for(lambda: failures(server) >= 1, what="the interrupted calculation to fail")
    assert server.store.synced_at == first
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    # One line per attempt: the cause, then when the next one comes.
    assert any(
        m.startswith("sync failed: database error: ")
        and "; keeping the last figures, next try in " in m
        for m in warnings
    ), warnings
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        assert client.get_stats(campaign).supporters == 6
    own_postgres.start()
    wait_for(lambda: server.store.synced_at != first, timeout=60, what="the retry to succeed")


def test_a_calculation_past_the_timeout_is_cancelled_and_retried(
    database_url: str, start_server: Callable[..., StatsServer], caplog: pytest.LogCaptureFixture
) -> None:
    server = ready(start_server(database_url, sync_timeout_ms=200))
    first = server.store.synced_at
    lock = lock_actions(database_url)
    try:
        server.sync.request(full=True)  # a refresh that finds nothing changed reads no table
        wait_for(lambda: failures(server) >= 1, what="the calculation to time out")
        assert server.store.synced_at == first
        assert "a query ran past --sync-timeout and was cancelled" in caplog.text
    finally:
        lock.close()
    wait_for(lambda: server.store.synced_at != first, what="the next calculation")


def test_never_two_calculations_at_once(
    database_url: str, start_server: Callable[..., StatsServer]
) -> None:
    server = ready(start_server(database_url))
    first = server.store.synced_at
    lock = lock_actions(database_url)
    try:
        for _ in range(5):  # full: a refresh that finds nothing changed reads no table
            server.sync.request(full=True)
        wait_for(lambda: calculations_waiting(database_url) == 1, what="a blocked calculation")
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'proca-stats'"
                " AND state = 'active' AND datname = current_database()"
            ).fetchone()
        assert row is not None
        assert row[0] == 1
    finally:
        lock.close()
    wait_for(lambda: server.store.synced_at != first, what="the calculation to finish")


def test_database_down_at_start_then_serving_once_it_is_up(
    own_postgres: ControlledPostgres, start_server: Callable[..., StatsServer]
) -> None:
    """Not a missing database this time: the PostgreSQL server itself refuses connections."""
    campaign = one_campaign(own_postgres.url)
    own_postgres.stop()
    server = start_server(own_postgres.url, connect_timeout=1.0)
    wait_for(lambda: failures(server) >= 2, what="the first calculations to fail")
    assert not is_serving(server.port)
    with StatsClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(Unavailable):
            client.get_stats(campaign)
        own_postgres.start()
        wait_for(lambda: is_serving(server.port), timeout=60, what="SERVING after the start")
        assert client.get_stats(campaign).supporters == 6
    assert server.sync.is_alive()
