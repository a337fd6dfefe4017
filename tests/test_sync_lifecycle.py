"""The sync's lifecycle on a real PostgreSQL: a stop never waits for a stuck calculation,
and a run is counted when it starts."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

import psycopg

from proca_stats.server.app import StatsServer
from tests.support.database import actions_locked, waiting_for_actions
from tests.support.metrics import sample
from tests.support.servers import clean_env
from tests.support.waiting import wait_for

# Every refresh a full calculation: a refresh that finds nothing changed reads no table, so only
# a full one is sure to wait on the lock.
FULL_EVERY_MS = 100


def blocked(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        wait_for(lambda: waiting_for_actions(conn), what="a refresh waiting on the lock")


def test_sigterm_during_a_calculation_stuck_on_a_lock_exits_without_waiting_for_it(
    serve: Callable[..., tuple[subprocess.Popen[str], int]], database_url: str
) -> None:
    process, _ = serve(
        env=clean_env(
            DATABASE_URL=database_url,
            SYNC_INTERVAL="100",
            PROCA_STATS_FULL_SYNC_INTERVAL=str(FULL_EVERY_MS),
        )
    )
    with actions_locked(database_url):
        blocked(database_url)
        process.send_signal(signal.SIGTERM)
        # Without cancelling, the stop would wait for the lock, held until after this.
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0, stderr
    assert "the running refresh was cancelled" in stderr
    assert "Traceback" not in stderr


def test_a_sync_run_is_counted_when_it_starts(
    start_server: Callable[..., StatsServer], database_url: str
) -> None:
    server = start_server(
        database_url,
        sync_interval_ms=100,
        full_sync_interval_ms=FULL_EVERY_MS,
        metrics_listen="127.0.0.1:0",
    )
    wait_for(lambda: server.store.synced_at, what="the first calculation")
    with actions_locked(database_url):
        blocked(database_url)
        finished = sample(server, "proca_stats_sync_duration_seconds_count") + sample(
            server, "proca_stats_sync_failures_total"
        )
        assert sample(server, "proca_stats_sync_runs_total") == finished + 1  # the one waiting
