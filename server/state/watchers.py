"""Who watches which campaign, and how a change reaches them without slowing the store.

The store tells the registry about a change after it has released its own lock;
the registry only raises a flag on the watchers of that campaign. Each watcher
then re-reads the campaign with the store's ordinary ``get``, in its own thread,
so a thousand watchers add a few flag writes to an Increment and nothing to a
GetStats. Nothing is queued per watcher: a slow reader gets the latest figures
when it is ready, never a backlog.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping

from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters


class WatchersFull(Exception):
    """The server already serves as many watchers as it may."""


class WatchersClosed(Exception):
    """The server is shutting down and takes no new watchers."""


class Watcher:
    """One stream's mailbox: a 'your campaign changed' flag and a 'stop' flag, nothing queued.

    The waiting thread sleeps on a bare lock used as a binary semaphore (held:
    nothing new), the cheapest wake-up Python has: a change costs a watcher one
    wake-up, not the bookkeeping of a Condition.
    """

    def __init__(self, campaign_id: int) -> None:
        self.campaign_id = campaign_id
        self._wake = threading.Lock()
        self._wake.acquire()
        self._changed = False
        self._closed = False

    def _signal(self) -> None:
        with contextlib.suppress(RuntimeError):  # released already: a wake-up is pending
            self._wake.release()

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
        while not self._closed:
            now = time.monotonic()
            if self._changed and now >= not_before:
                self._changed = False
                return True
            if not self._changed and now >= deadline:
                return False
            self._wake.acquire(timeout=(not_before if self._changed else deadline) - now)
        return False


class Watchers:
    """The open watchers by campaign, capped at ``limit``; the store reports changes here."""

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._by_campaign: dict[int, set[Watcher]] = {}
        self._count = 0
        self._limit = limit
        self._closed = False

    def open(self, campaign_id: int) -> Watcher:
        """A watcher for the campaign, counted against the limit until ``release``."""
        watcher = Watcher(campaign_id)
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
