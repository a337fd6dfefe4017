"""The in-memory counters of every campaign, shared by the RPC threads and the sync.

One lock guards two references: the campaigns map and the time of the snapshot
it builds on. Every critical section is a dictionary lookup or assignment;
building responses and calculating snapshots happen outside it.
"""

from __future__ import annotations

import threading
from datetime import datetime

from .counters import CampaignCounters, Increment, Snapshot, incremented

_EMPTY = CampaignCounters()


class StatsStore:
    """Thread-safe campaign counters, replaced whole by each full calculation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._campaigns: dict[int, CampaignCounters] = {}
        self._synced_at: datetime | None = None

    def increment(self, inc: Increment) -> None:
        """Count one accepted action; a campaign not seen yet is created."""
        with self._lock:
            current = self._campaigns.get(inc.campaign_id, _EMPTY)
            self._campaigns[inc.campaign_id] = incremented(current, inc)

    def get(self, campaign_id: int) -> tuple[CampaignCounters, datetime | None]:
        """A campaign's counters (zeros when unknown) and when their snapshot was taken."""
        with self._lock:
            return self._campaigns.get(campaign_id, _EMPTY), self._synced_at

    def replace(self, snapshot: Snapshot) -> None:
        """Swap in a full calculation's result; the store takes ownership of its map."""
        with self._lock:
            self._campaigns = snapshot.campaigns
            self._synced_at = snapshot.taken_at

    @property
    def synced_at(self) -> datetime | None:
        """When the figures' snapshot was taken; None until the first calculation."""
        with self._lock:
            return self._synced_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._campaigns)
