"""The in-memory counters of every campaign, shared by the RPC threads and the sync.

One lock guards the campaigns map, the time of the snapshot it builds on and
the memory of Increments that carry an action id. Every critical section is a
few dictionary or list operations; building responses, calculating snapshots
and re-applying Increments on top of a new snapshot happen outside it
(see handover.py), and so does telling the watchers: they are told after the
lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters, Increment, incremented
from proca_stats.server.state.limits import Limits


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
    for field_name, key, counts in maps:
        if key is not None and key not in counts and len(counts) >= max_keys:
            raise CapacityError(
                f"{field_name}: campaign {inc.campaign_id} already has {max_keys} distinct "
                "keys in this map (--max-keys-per-map); an Increment cannot add another"
            )


@dataclass(frozen=True, slots=True)
class Arrival:
    """An Increment with an action id, numbered in the order the store counted it."""

    seq: int
    increment: Increment


@dataclass(frozen=True, slots=True)
class Replacement:
    """A new snapshot's figures, ready to swap in, and what the store remembers after it.

    ``upto`` is the number of Increments with an action id the figures were
    prepared against: the swap is refused when more arrived since.
    """

    campaigns: dict[int, CampaignCounters]
    taken_at: datetime
    upto: int
    remembered: frozenset[int] = frozenset()
    carried: list[Arrival] = field(default_factory=list)
    pages: Mapping[int, int] = field(default_factory=dict)  # action page id → campaign id


class StatsStore:
    """Thread-safe campaign counters, replaced whole by each calculation.

    Increments with an action id are remembered so that a retry counts once and
    so that the next swap can re-apply those its snapshot did not see. Memory
    stays bounded: each swap forgets every id except those it re-applied and
    those its snapshot confirmed (kept one generation for late retries); and
    while no swap comes (the database is down, or ``--sync-interval 0``), at
    most ``Limits.max_action_ids`` are remembered, the oldest forgotten first.
    Forgetting one costs little: the oldest are the likeliest to be in the next
    snapshot anyway, and a figure it makes wrong (a very late retry counted
    twice) is set right by the next sync.
    """

    def __init__(
        self, limits: Limits | None = None, listener: ChangeListener | None = None
    ) -> None:
        self._limits = limits or Limits()
        self._listener = listener
        self._lock = threading.Lock()
        self._campaigns: dict[int, CampaignCounters] = {}
        self._pages: Mapping[int, int] = {}  # action page id → campaign id, of the snapshot
        self._synced_at: datetime | None = None
        self._known: OrderedDict[int, None] = OrderedDict()  # ids that must not count again
        self._log: list[Arrival] = []  # Increments with an action id since the last swap
        self._carried: list[Arrival] = []  # re-applied by the last swap, not yet seen
        self._arrivals = 0  # Increments with an action id ever counted

    def increment(self, inc: Increment) -> bool:
        """Count one accepted action; False when its action id was already counted.

        A campaign not seen yet is created. Raises CapacityError, counting
        nothing, when a cap would be passed.
        """
        with self._lock:
            if inc.action_id is not None and inc.action_id in self._known:
                return False
            current = self._campaigns.get(inc.campaign_id)
            if current is None:
                if len(self._campaigns) >= self._limits.max_campaigns:
                    raise CapacityError(
                        f"campaign_id: this server already holds {self._limits.max_campaigns} "
                        "campaigns (--max-campaigns); an Increment cannot add another"
                    )
                current = NO_COUNTERS
            _check_keys(current, inc, self._limits.max_keys_per_map)
            if inc.action_id is not None:
                self._remember(inc.action_id, inc)
            self._campaigns[inc.campaign_id] = incremented(current, inc)
        if self._listener is not None:
            self._listener.campaign_changed(inc.campaign_id)
        return True

    def _remember(self, action_id: int, inc: Increment) -> None:
        """Note a counted Increment with an action id; the caller holds the lock."""
        cap = self._limits.max_action_ids
        while len(self._known) >= cap:
            self._known.popitem(last=False)
        self._known[action_id] = None
        if len(self._log) >= cap:
            del self._log[: len(self._log) // 4 + 1]  # the oldest quarter: trimming stays rare
        self._log.append(Arrival(self._arrivals, inc))
        self._arrivals += 1

    def arrivals(self) -> int:
        """How many Increments with an action id were counted so far.

        The sync reads it just before a calculation's snapshot is taken: every
        Increment numbered below it reported an action already committed, so
        that snapshot sees the action if the database still has it.
        """
        with self._lock:
            return self._arrivals

    def arrived_since(self, seq: int) -> tuple[list[Arrival], int]:
        """The Increments with an action id numbered ``seq`` or later since the last swap,
        and how many were counted so far."""
        with self._lock:
            base = self._log[0].seq if self._log else self._arrivals
            return self._log[max(0, seq - base) :], self._arrivals

    def carried(self) -> list[Arrival]:
        """The Increments the last swap re-applied because its snapshot had not seen them."""
        with self._lock:
            return list(self._carried)

    def get(self, campaign_id: int) -> tuple[CampaignCounters, datetime | None]:
        """A campaign's counters (zeros when unknown) and when their snapshot was taken."""
        with self._lock:
            return self._campaigns.get(campaign_id, NO_COUNTERS), self._synced_at

    def get_by_page(self, page_id: int) -> tuple[int | None, CampaignCounters, datetime | None]:
        """The campaign of an action page (None when no page has that id), its counters
        and when their snapshot was taken, all as of the same swap."""
        with self._lock:
            campaign_id = self._pages.get(page_id)
            if campaign_id is None:
                return None, NO_COUNTERS, self._synced_at
            return campaign_id, self._campaigns.get(campaign_id, NO_COUNTERS), self._synced_at

    def get_many(
        self, campaign_ids: Iterable[int]
    ) -> tuple[list[CampaignCounters], datetime | None]:
        """Several campaigns' counters, in the order asked, all from the same snapshot.

        The lookups happen under the lock (a thousand take microseconds), so a
        dashboard never shows some campaigns before a sync and some after.
        """
        with self._lock:
            return [self._campaigns.get(cid, NO_COUNTERS) for cid in campaign_ids], self._synced_at

    def replace_if_current(self, new: Replacement) -> bool:
        """Swap in prepared figures unless an Increment with an action id arrived meanwhile.

        When one did, nothing changes and the caller prepares again with it.
        The store takes ownership of the map.
        """
        known = OrderedDict.fromkeys(new.remembered)  # built before the lock is taken
        with self._lock:
            if self._arrivals != new.upto:
                return False
            old = self._campaigns
            self._campaigns = new.campaigns
            self._pages = new.pages
            self._synced_at = new.taken_at
            self._known = known
            self._carried = new.carried
            self._log = []
        if self._listener is not None:
            self._listener.campaigns_replaced(old, new.campaigns)
        return True

    def remembered(self) -> int:
        """How many action ids the store remembers (for tests and the benchmark)."""
        with self._lock:
            return len(self._known)

    @property
    def synced_at(self) -> datetime | None:
        """When the figures' snapshot was taken; None until the first calculation."""
        with self._lock:
            return self._synced_at

    def __len__(self) -> int:
        with self._lock:
            return len(self._campaigns)
