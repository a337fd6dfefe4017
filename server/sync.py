"""The background recalculation (SPEC §4): it only produces snapshots and hands them over.

One thread runs every calculation, so two never run at once (the `query_runs`
flag of Proca's module). A failed calculation leaves the store as it was: the
server keeps answering with the last figures and retries with a capped backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Protocol

import psycopg
from psycopg_pool import ConnectionPool

from .calculation import calculate
from .counters import Snapshot

log = logging.getLogger(__name__)


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the n-th failure in a row: doubling, capped, half of it jittered.

    The jitter keeps several servers that lost the same database from
    reconnecting in lockstep.
    """
    delay: float = min(cap, base * 2 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)


class SyncListener(Protocol):
    """Where the sync's results go: the store (through the app) and the metrics."""

    def delivered(self, snapshot: Snapshot, seconds: float) -> None: ...

    def failed(self, seconds: float) -> None: ...


class SyncWorker:
    """Recalculates every campaign at an interval and passes each result to its listener."""

    def __init__(
        self,
        pool: ConnectionPool,
        listener: SyncListener,
        *,
        interval: float,
        timeout: float,
        connect_timeout: float,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
    ) -> None:
        """Times in seconds. ``interval`` 0 calculates once at start (retrying until it succeeds);
        ``timeout`` cancels a calculation that runs longer (0: never)."""
        self._pool = pool
        self._listener = listener
        self._interval = interval
        self._timeout_ms = round(timeout * 1000)
        self._connect_timeout = connect_timeout
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="proca-stats-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def request(self) -> None:
        """Run a calculation now rather than at the next interval."""
        self._wake.set()

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the running calculation, if any."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            if self._attempt():
                failures = 0
                delay = self._interval or None  # None: only when requested
            else:
                failures += 1
                delay = backoff_delay(failures, self._retry_base, self._retry_cap)
                log.warning("keeping the last figures; next try in %.1f s", delay)
            self._wake.wait(delay)

    def _attempt(self) -> bool:
        """Run one calculation and deliver it; False when it failed."""
        started = time.monotonic()
        try:
            with self._pool.connection(timeout=self._connect_timeout) as conn:
                snapshot = calculate(conn, self._timeout_ms)
        except psycopg.errors.QueryCanceled:
            log.warning("sync failed: the calculation ran past --sync-timeout and was cancelled")
        except psycopg.Error as error:
            log.warning("sync failed: database error: %s", str(error).strip())
        except Exception:
            # A bug must not end the thread: the figures would silently freeze.
            log.exception("sync failed: unexpected error")
        else:
            seconds = time.monotonic() - started
            self._listener.delivered(snapshot, seconds)
            log.info(
                "sync: %d campaigns from %d aggregated rows in %.2f s (snapshot %s)",
                len(snapshot.campaigns),
                snapshot.rows_read,
                seconds,
                snapshot.taken_at.isoformat(),
            )
            return True
        self._listener.failed(time.monotonic() - started)
        return False
