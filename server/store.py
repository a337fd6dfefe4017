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
from typing import Any, Protocol

from .config import Limits
from .counters import NO_COUNTERS, CampaignCounters, Increment, Snapshot, incremented


class ChangeListener(Protocol):
    """Told about every change, outside the store's lock, after readers can see it."""

    def campaign_changed(self, campaign_id: int) -> None: ...

    def campaigns_replaced(
        self, old: Mapping[int, CampaignCounters], new: Mapping[int, CampaignCounters]
    ) -> None: ...


class CapacityError(Exception):
    """An Increment would pass one of the configured caps; nothing was counted."""


def _check_keys(counters: CampaignCounters, inc: Increment, max_keys: int) -> None:
    """Refuse an Increment that would add a map key past the cap."""
    maps: tuple[tuple[str, object, Mapping[Any, int]], ...] = (
        ("action_type", inc.action_type, counters.actions_by_type),
        ("area", inc.area, counters.supporters_by_area),
        ("org_id", inc.org_id, counters.supporters_by_org),
    )
    for field, key, counts in maps:
        if key is not None and key not in counts and len(counts) >= max_keys:
            raise CapacityError(
                f"{field}: campaign {inc.campaign_id} already has {max_keys} distinct keys "
                "in this map (--max-keys-per-map); an Increment cannot add another"
            )


class StatsStore:
    """Thread-safe campaign counters, replaced whole by each full calculation."""

    def __init__(
        self, limits: Limits | None = None, listener: ChangeListener | None = None
    ) -> None:
        self._limits = limits or Limits()
        self._lock = threading.Lock()
        self._campaigns: dict[int, CampaignCounters] = {}
        self._synced_at: datetime | None = None
        self._listener = listener

    def increment(self, inc: Increment) -> None:
        """Count one accepted action; a campaign not seen yet is created.

        Raises CapacityError, counting nothing, when a cap would be passed.
        """
        with self._lock:
            current = self._campaigns.get(inc.campaign_id)
            if current is None:
                if len(self._campaigns) >= self._limits.max_campaigns:
                    raise CapacityError(
                        f"campaign_id: this server already holds {self._limits.max_campaigns} "
                        "campaigns (--max-campaigns); an Increment cannot add another"
                    )
                current = NO_COUNTERS
            _check_keys(current, inc, self._limits.max_keys_per_map)
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
