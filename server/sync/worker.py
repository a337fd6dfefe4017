"""The background recalculation (docs/sync.md): it only produces snapshots and hands them over.

One thread runs every calculation, so two never run at once (the `query_runs`
flag of Proca's module). Which calculation runs — full or incremental — is the
refresher's business (refresh.py); swapping the result in is the deliverer's
(handover.py). A failed calculation leaves the store as it was: the server
keeps answering with the last figures and retries with a capped backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime, timedelta
from typing import Protocol

import psycopg

from proca_stats.server.database_check import cause
from proca_stats.server.retry import Backoff
from proca_stats.server.state.counters import Snapshot
from proca_stats.server.state.handover import Lookup
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import RefreshCancelled

log = logging.getLogger(__name__)

# How long a stop waits for the sync thread once its queries are cancelled.
STOP_WAIT = 5.0


# Where a snapshot goes: swapped into the store. It is called while the snapshot's
# transaction is still open, so that ``seen(action_ids)`` can tell which actions it sees.
Deliver = Callable[[Snapshot, Lookup], None]


class SyncMetrics(Protocol):
    """What the worker reports: each refresh when it starts, then its success or failure."""

    def sync_started(self) -> None: ...

    def sync_succeeded(self, seconds: float) -> None: ...

    def sync_failed(self) -> None: ...


class RunSpan(Protocol):
    """Where a run says how it ended (a tracing span; tracing.py)."""

    def succeeded(self, **attributes: str | int | float) -> None: ...

    def failed(self, why: str) -> None: ...


class _Untraced:
    def succeeded(self, **attributes: str | int | float) -> None:
        pass

    def failed(self, why: str) -> None:
        pass


def untraced() -> AbstractContextManager[RunSpan]:
    return nullcontext(_Untraced())


class Requests:
    """Refreshes asked for by other threads, and the stop: the worker's one wake-up.

    One lock guards the flags, so a full calculation asked for while the worker
    takes the last request is kept for the next run, never downgraded to an
    incremental one.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._woken = False
        self._full = False
        self.stopping = False

    def ask(self, *, full: bool = False) -> None:
        with self._cond:
            self._woken = True
            self._full |= full
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self.stopping = True
            self._cond.notify()

    def wait(self, timeout: float | None) -> bool:
        """Wait until asked, stopped or ``timeout`` s passed (None: no timeout); False once
        stopping. A request made while the worker was busy ends the wait at once."""
        with self._cond:
            self._cond.wait_for(lambda: self._woken or self.stopping, timeout)
            self._woken = False
            return not self.stopping

    def take_full(self) -> bool:
        """Whether a full calculation was asked for since the last call."""
        with self._cond:
            full, self._full = self._full, False
            return full


class SyncWorker:
    """Refreshes the figures at an interval and delivers each snapshot.

    ``increments_before()`` is read just before each snapshot is taken.
    """

    def __init__(
        self,
        refresher: Refresher,
        deliver: Deliver,
        metrics: SyncMetrics,
        *,
        interval: float,
        increments_before: Callable[[], int] = lambda: 0,
        retry_base: float = 0.5,
        retry_cap: float = 30.0,
        span: Callable[[], AbstractContextManager[RunSpan]] = untraced,
        before_first: Callable[[], None] | None = None,
    ) -> None:
        """``interval`` is in seconds; 0 calculates once at start (retrying until it succeeds).
        ``span()`` surrounds each run (tracing). ``before_first`` runs in the sync thread
        before the first refresh (a warm start), retried like a refresh until it succeeds."""
        self._before_first = before_first
        self._refresher = refresher
        self._deliver = deliver
        self._metrics = metrics
        self._interval = interval
        self._increments_before = increments_before
        self._retry = Backoff(retry_base, retry_cap)
        self._span = span
        self._requests = Requests()
        self._thread = threading.Thread(target=self._run, name="proca-stats-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def request(self, *, full: bool = False) -> None:
        """Refresh now rather than at the next interval; ``full``: a full calculation."""
        self._requests.ask(full=full)

    def stop(self, timeout: float = STOP_WAIT) -> None:
        """Cancel the running calculation, if any, and release its transactions.

        A calculation can run for minutes, or wait on a lock: a stop cancels its
        queries rather than wait, and gives up on the thread after ``timeout``
        seconds (it is a daemon; closing the pool then ends its connections).
        """
        self._requests.stop()
        self._refresher.cancel()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the sync thread did not stop within %g s; leaving it", timeout)
        else:
            self._refresher.close()

    def _run(self) -> None:
        delay: float | None = 0
        while self._requests.wait(delay):
            with self._span() as span:
                failure = self._attempt(span)
            if failure is None:
                self._retry.succeeded()
                delay = self._interval or None  # None: only when requested
            elif self._requests.stopping:
                break
            else:
                delay = self._retry.failed()
                at = datetime.now(UTC) + timedelta(seconds=delay)
                # One line per attempt, whatever failed: the pool's own lines are silenced.
                log.warning(
                    "sync failed: %s; keeping the last figures, next try in %.1f s (%s)",
                    failure,
                    delay,
                    at.strftime("%H:%M:%S UTC"),
                )

    def _attempt(self, span: RunSpan) -> str | None:
        """Run one refresh and deliver it; why it failed, or None when it succeeded."""
        full = self._requests.take_full()
        self._metrics.sync_started()
        try:
            if self._before_first is not None:
                self._before_first()
                self._before_first = None
            snapshot, report = self._refresher.run(
                full=full, increments_before=self._increments_before()
            )
            self._deliver(snapshot, self._refresher.seen)
            self._refresher.settle()
        except Exception as error:
            self._refresher.abandon()
            if self._requests.stopping and isinstance(
                error,
                (
                    RefreshCancelled,
                    psycopg.errors.QueryCanceled,
                    psycopg.OperationalError,
                ),
            ):
                log.info("sync: the running refresh was cancelled, the server is stopping")
                return "cancelled"
            self._metrics.sync_failed()
            failure = self._failure(error)
            span.failed(failure)
            return failure
        self._metrics.sync_succeeded(report.seconds)
        span.succeeded(
            kind=report.kind,
            campaigns=len(snapshot.campaigns),
            rows_read=report.rows_read,
            seconds=report.seconds,
        )
        log.info(
            "sync: %s refresh, %d campaigns in %.3f s, %d rows read (snapshot %s; %d actions "
            "and %d supporters changed, %d keys, %d campaigns recounted, change feed %s)",
            report.kind,
            len(snapshot.campaigns),
            report.seconds,
            report.rows_read,
            snapshot.taken_at.isoformat(),
            report.changed_actions,
            report.changed_supporters,
            report.keys,
            report.recounted,
            report.feed,
        )
        return None

    @staticmethod
    def _failure(error: Exception) -> str:
        """Why a run failed, in words for the log."""
        if isinstance(error, psycopg.errors.QueryCanceled):
            return "a query ran past --sync-timeout and was cancelled"
        if isinstance(error, psycopg.Error):  # NoConnection too: a PoolTimeout
            return f"database error: {cause(error)}"
        # A bug must not end the thread: the figures would silently freeze.
        log.exception("sync failed: unexpected error")
        return "unexpected error (the traceback is above)"
