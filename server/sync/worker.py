"""The background recalculation (docs/sync.md): it only produces snapshots and hands them over.

One thread runs every calculation, so two never run at once (the `query_runs`
flag of Proca's module). Which calculation runs — full or incremental — is the
refresher's business (refresh.py); swapping the result in is the deliverer's
(handover.py). A failed calculation leaves the store as it was: the server
keeps answering with the last figures and retries with a capped backoff.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Protocol

import psycopg

from proca_stats.server.state.counters import Snapshot
from proca_stats.server.state.handover import Lookup
from proca_stats.server.sync.refresh import RefreshCancelled, Refresher

log = logging.getLogger(__name__)

# How long a stop waits for the sync thread once its queries are cancelled.
STOP_WAIT = 5.0


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Seconds to wait after the n-th failure in a row: doubling, capped, half of it jittered.

    The jitter keeps several servers that lost the same database from
    reconnecting in lockstep.
    """
    delay: float = min(cap, base * 2 ** (failures - 1))
    return delay * random.uniform(0.5, 1.0)


class Backoff:
    """The failures in a row of one thread's attempts, and how long to wait after the last."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next attempt."""
        self.failures += 1
        return backoff_delay(self.failures, self._base, self._cap)

    def succeeded(self) -> None:
        self.failures = 0


class SyncListener(Protocol):
    """Where the sync's results go: the store (through the app) and the metrics.

    ``started()`` comes before each refresh, then ``delivered`` or ``failed``.
    ``delivered(snapshot, seen, seconds)`` runs while the snapshot's transaction
    is still open: ``seen(action_ids)`` tells which actions the snapshot sees.
    """

    def started(self) -> None: ...

    def delivered(self, snapshot: Snapshot, seen: Lookup, seconds: float) -> None: ...

    def failed(self, seconds: float) -> None: ...


class SyncWorker:
    """Refreshes the figures at an interval and passes each snapshot to its listener.

    ``increments_before()`` is read just before each snapshot is taken.
    """

    def __init__(
        self,
        refresher: Refresher,
        listener: SyncListener,
        *,
        interval: float,
        increments_before: Callable[[], int] = lambda: 0,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
    ) -> None:
        """``interval`` is in seconds; 0 calculates once at start (retrying until it succeeds)."""
        self._refresher = refresher
        self._listener = listener
        self._interval = interval
        self._increments_before = increments_before
        self._retry = Backoff(retry_base, retry_cap)
        self._wake = threading.Event()
        self._full_requested = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="proca-stats-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def request(self, *, full: bool = False) -> None:
        """Refresh now rather than at the next interval; ``full``: a full calculation."""
        if full:
            self._full_requested = True
        self._wake.set()

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Cancel the running calculation, if any, and release its transactions.

        A calculation can run for minutes, or wait on a lock: a stop cancels its
        queries rather than wait, and gives up on the thread after ``timeout``
        seconds (it is a daemon; closing the pool then ends its connections).
        """
        self._stopping = True
        self._wake.set()
        self._refresher.cancel()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the sync thread did not stop within %g s; leaving it", timeout)
        else:
            self._refresher.close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            if self._attempt():
                self._retry.succeeded()
                delay = self._interval or None  # None: only when requested
            elif self._stopping:
                break
            else:
                delay = self._retry.failed()
                log.warning("keeping the last figures; next try in %.1f s", delay)
            self._wake.wait(delay)

    def _attempt(self) -> bool:
        """Run one refresh and deliver it; False when it failed."""
        full, self._full_requested = self._full_requested, False
        started = time.monotonic()
        self._listener.started()
        try:
            snapshot, report = self._refresher.run(
                full=full, increments_before=self._increments_before()
            )
            self._listener.delivered(snapshot, self._refresher.seen, report.seconds)
            self._refresher.settle()
        except Exception as error:
            self._refresher.abandon()
            if self._stopping and isinstance(
                error, (RefreshCancelled, psycopg.errors.QueryCanceled, psycopg.OperationalError)
            ):
                log.info("sync: the running refresh was cancelled, the server is stopping")
                return False
            if isinstance(error, psycopg.errors.QueryCanceled):
                log.warning("sync failed: a query ran past --sync-timeout and was cancelled")
            elif isinstance(error, psycopg.Error):
                log.warning("sync failed: database error: %s", str(error).strip())
            else:
                # A bug must not end the thread: the figures would silently freeze.
                log.exception("sync failed: unexpected error")
            self._listener.failed(time.monotonic() - started)
            return False
        log.info(
            "sync: %s refresh, %d campaigns in %.3f s, %d rows read (snapshot %s; %d actions "
            "and %d supporters changed, %d keys, %d campaigns recounted)",
            report.kind,
            len(snapshot.campaigns),
            report.seconds,
            report.rows_read,
            snapshot.taken_at.isoformat(),
            report.changed_actions,
            report.changed_supporters,
            report.keys,
            report.recounted,
        )
        return True
