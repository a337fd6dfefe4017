"""Who watches which campaign, and how a change reaches them without slowing the store.

The store tells the registry about a change after it has released its own lock;
the registry only raises a flag on the watchers of that campaign. Each watcher
then re-reads the campaign with the store's ordinary ``get``, in its own thread,
so a thousand watchers add a few flag writes to an Increment and nothing to a
GetStats. Nothing is queued per watcher: a slow reader gets the latest figures
when it is ready, never a backlog.

A watcher waits in a thread of its own (a gRPC stream) or as a task on an
event loop (an HTTP stream): ``LoopWakeups`` hands a loop's wake-ups over in
one call per batch, so a change seen by a thousand HTTP watchers costs the
notifying thread one wake-up of the loop, not a thousand.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Mapping

from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters


class WatchersFull(Exception):
    """The server already serves as many watchers as it may."""


class WatchersClosed(Exception):
    """The server is shutting down and takes no new watchers."""


class LoopWakeups:
    """Wakes the watchers that wait on one event loop, from any thread.

    The first wake-up of a batch schedules one call on the loop; the ones that
    come before it runs only join the batch. The call then wakes each watcher
    of the batch in the loop's own thread, as asyncio requires.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: set[Watcher] = set()

    def wake(self, watcher: Watcher) -> None:
        with self._lock:
            first = not self._pending
            self._pending.add(watcher)
        if first:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        for watcher in pending:
            watcher.woken()


def _resolve(sleep: asyncio.Future[None] | None) -> None:
    if sleep is not None and not sleep.done():
        sleep.set_result(None)


class Watcher:
    """One stream's mailbox: a 'your campaign changed' flag and a 'stop' flag, nothing queued.

    A waiting thread sleeps on a bare lock used as a binary semaphore (held:
    nothing new), the cheapest wake-up Python has: a change costs a watcher one
    wake-up, not the bookkeeping of a Condition. A watcher of an event loop
    (``loop`` given) sleeps on a bare future instead, resolved through the loop's
    ``LoopWakeups``. Both decide what to do in one place (``_due``).
    """

    def __init__(self, campaign_id: int, loop: LoopWakeups | None = None) -> None:
        self.campaign_id = campaign_id
        self._loop = loop
        self._wake = threading.Lock()
        self._wake.acquire()
        self._sleep: asyncio.Future[None] | None = None  # an event loop watcher's, while it sleeps
        self._changed = False
        self._closed = False

    def _signal(self) -> None:
        if self._loop is not None:
            self._loop.wake(self)
            return
        with contextlib.suppress(RuntimeError):  # released already: a wake-up is pending
            self._wake.release()

    def woken(self) -> None:
        """Wake a watcher of an event loop; runs in the loop's thread."""
        _resolve(self._sleep)

    def notify(self) -> None:
        self._changed = True
        self._signal()

    def close(self) -> None:
        """End the stream: the waiting thread wakes and stops (idempotent)."""
        self._closed = True
        self._signal()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, not_before: float, timeout: float) -> bool:
        """Block until a change may be sent: True once the campaign changed and the
        monotonic clock passed ``not_before``; False when closed or when ``timeout``
        seconds passed without a change, so the caller can check its stream is alive.

        A change that comes early is held until ``not_before``, so every change
        since the last message goes out together in the next one. The flags are
        set before the wake-up, so one that comes between a check and the sleep
        only makes the sleep return at once.
        """
        deadline = time.monotonic() + timeout
        while not isinstance(due := self._due(not_before, deadline), bool):
            self._wake.acquire(timeout=due)
        return due

    async def wait_async(self, not_before: float) -> bool:
        """``wait`` for a watcher of an event loop, sleeping as a task, not a thread: True
        once a change may be sent, False once closed.

        No liveness timeout: a client that leaves cancels the task. A sleep is one
        future, resolved by a wake-up, or by one timer when a change that came early is
        held until ``not_before``; asyncio's Event and timeout cost more per message. A
        wake-up can only come while the task awaits (both run in the loop's thread), and
        the flags it follows are read before each sleep, so none is missed.
        """
        loop = asyncio.get_running_loop()
        while not isinstance(due := self._due(not_before, math.inf), bool):
            self._sleep = sleep = loop.create_future()
            timer = None if due == math.inf else loop.call_later(due, _resolve, sleep)
            try:
                await sleep
            finally:
                self._sleep = None
                if timer is not None:
                    timer.cancel()
        return due

    def _due(self, not_before: float, deadline: float) -> bool | float:
        """What a wait does now: return True (a change may be sent) or False (closed, or
        nothing changed by ``deadline``), or sleep the seconds returned."""
        if self._closed:
            return False
        now = time.monotonic()
        if self._changed and now >= not_before:
            self._changed = False
            return True
        if not self._changed and now >= deadline:
            return False
        return (not_before if self._changed else deadline) - now


class Watchers:
    """The open watchers by campaign, capped at ``limit``; the store reports changes here."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._by_campaign: dict[int, set[Watcher]] = {}
        self._count = 0
        self._limit = limit
        self._closed = False

    def open(self, campaign_id: int, loop: LoopWakeups | None = None) -> Watcher:
        """A watcher for the campaign, counted against the limit until ``release``; one
        that waits on an event loop when ``loop`` is given."""
        watcher = Watcher(campaign_id, loop)
        with self._lock:
            if self._closed:
                raise WatchersClosed("the server is shutting down")
            if self._count >= self._limit:
                raise WatchersFull(f"the server already serves its {self._limit} watchers at most")
            self._by_campaign.setdefault(campaign_id, set()).add(watcher)
            self._count += 1
        return watcher

    def release(self, watcher: Watcher) -> None:
        """Free the watcher's place; safe to call more than once for the same watcher."""
        watcher.close()
        with self._lock:
            watching = self._by_campaign.get(watcher.campaign_id)
            if watching is None or watcher not in watching:
                return
            watching.remove(watcher)
            if not watching:
                del self._by_campaign[watcher.campaign_id]
            self._count -= 1

    def close(self) -> None:
        """End every stream and refuse new ones, so that shutdown does not wait for clients."""
        with self._lock:
            self._closed = True
            watching = [w for ws in self._by_campaign.values() for w in ws]
        for watcher in watching:
            watcher.close()

    def campaign_changed(self, campaign_id: int) -> None:
        with self._lock:
            watching = list(self._by_campaign.get(campaign_id, ()))
        for watcher in watching:
            watcher.notify()

    def campaigns_replaced(
        self, old: Mapping[int, CampaignCounters], new: Mapping[int, CampaignCounters]
    ) -> None:
        """Wake the watchers of the campaigns whose figures a calculation changed.

        Only watched campaigns are compared, so a sync of many campaigns costs
        the watchers nothing when few are watched.
        """
        with self._lock:
            watched = {cid: list(ws) for cid, ws in self._by_campaign.items()}
        for campaign_id, watching in watched.items():
            if old.get(campaign_id, NO_COUNTERS) != new.get(campaign_id, NO_COUNTERS):
                for watcher in watching:
                    watcher.notify()

    def __len__(self) -> int:
        with self._lock:
            return self._count
