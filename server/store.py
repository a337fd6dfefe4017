"""The in-memory counters of every campaign, shared by the RPC threads and the sync.

One lock guards two references: the campaigns map and the time of the snapshot
it builds on. Every critical section is a dictionary lookup or assignment;
building responses and calculating snapshots happen outside it, and so does
telling the watchers: they are told after the lock is released.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Protocol

from .counters import NO_COUNTERS, CampaignCounters, Increment, Snapshot, incremented


class ChangeListener(Protocol):
    """Told about every change, outside the store's lock, after readers can see it."""

    def campaign_changed(self, campaign_id: int) -> None: ...

    def campaigns_replaced(
        self, old: Mapping[int, CampaignCounters], new: Mapping[int, CampaignCounters]
    ) -> None: ...


class StatsStore:
    """Thread-safe campaign counters, replaced whole by each full calculation."""

    def __init__(self, listener: ChangeListener | None = None) -> None:
        self._lock = threading.Lock()
        self._campaigns: dict[int, CampaignCounters] = {}
        self._synced_at: datetime | None = None
        self._listener = listener

    def increment(self, inc: Increment) -> None:
        """Count one accepted action; a campaign not seen yet is created."""
        with self._lock:
            current = self._campaigns.get(inc.campaign_id, NO_COUNTERS)
            self._campaigns[inc.campaign_id] = incremented(current, inc)
        if self._listener is not None:
            self._listener.campaign_changed(inc.campaign_id)

    def get(self, campaign_id: int) -> tuple[CampaignCounters, datetime | None]:
        """A campaign's counters (zeros when unknown) and when their snapshot was taken."""
        with self._lock:
            return self._campaigns.get(campaign_id, NO_COUNTERS), self._synced_at

    def get_many(
        self, campaign_ids: Iterable[int]
    ) -> tuple[list[CampaignCounters], datetime | None]:
        """Several campaigns' counters, in the order asked, all from the same snapshot.

        The lookups happen under the lock (a thousand take microseconds), so a
        dashboard never shows some campaigns before a sync and some after.
        """
        with self._lock:
            return [self._campaigns.get(cid, NO_COUNTERS) for cid in campaign_ids], self._synced_at

    def replace(self, snapshot: Snapshot) -> None:
        """Swap in a full calculation's result; the store takes ownership of its map."""
        with self._lock:
            old = self._campaigns
            self._campaigns = snapshot.campaigns
            self._synced_at = snapshot.taken_at
        if self._listener is not None:
            self._listener.campaigns_replaced(old, snapshot.campaigns)

    @property
    def synced_at(self) -> datetime | None:
        """When the figures' snapshot was taken; None until the first calculation."""
        with self._lock:
            return self._synced_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._campaigns)
