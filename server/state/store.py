"""The in-memory counters of every campaign, shared by the RPC threads and the sync.

One lock guards the campaigns map, the time of the snapshot it builds on and
the memory of Increments that carry an action id. Every critical section is a
few dictionary or list operations; building responses, calculating snapshots,
re-applying Increments on top of a new snapshot (handover.py) and looking up
the late ones (late.py) happen outside it, and so does telling the watchers:
they are told after the lock is released.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from proca_stats.server.state.counters import (
    NO_COUNTERS,
    CampaignCounters,
    Increment,
    decremented,
    incremented,
    new_keys,
)
from proca_stats.server.state.limits import Limits


class ChangeListener(Protocol):
    """Told about every change, outside the store's lock, after readers can see it."""

    def campaign_changed(self, campaign_id: int) -> None: ...

    def campaigns_replaced(
        self, old: Mapping[int, CampaignCounters], new: Mapping[int, CampaignCounters]
    ) -> None: ...


class Held(Protocol):
    """The snapshot the last swap installed, as any thread may ask it while the store holds
    its figures."""

    def seen(self, action_ids: Collection[int]) -> set[int]:
        """Which of these action ids it holds (a database round trip)."""
        ...

    def sees_transaction(self, xid: int) -> bool:
        """True when the transaction ``xid`` had committed before it was taken; False when
        it had not, or when that cannot be told."""
        ...


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
    """An Increment with an action id, numbered in the order the store counted it, and the
    keys it added to its campaign's maps (``counters.new_keys``)."""

    seq: int
    increment: Increment
    added: int = 0

    @property
    def action_id(self) -> int:
        action_id = self.increment.action_id
        assert action_id is not None  # only Increments with an action id arrive
        return action_id


@dataclass(frozen=True, slots=True)
class Check:
    """Increments counted after a swap, to look up in the snapshot that swap installed.

    ``generation`` names the swap: the answer is refused after another one.
    ``upto`` is the number of Increments with an action id counted when it was taken.
    """

    generation: int
    held: Held
    arrivals: list[Arrival]
    upto: int


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
    held: Held | None = None  # where the Increments counted after the swap are looked up
    pages: Mapping[int, int] = field(default_factory=dict)  # action page id → campaign id


class StatsStore:
    """Thread-safe campaign counters, replaced whole by each calculation.

    Increments with an action id are remembered so that a retry counts once and
    so that the next swap can re-apply those its snapshot did not see. Memory
    stays bounded: each swap forgets every id except those it re-applied and
    those its snapshot confirmed (kept one generation for late retries); and
    while no swap comes (the database is down, or ``--sync-interval 0``), at
    most ``Limits.max_action_ids`` are remembered, the oldest forgotten first.
    The first id forgotten since a swap tells ``forgetting()``, which asks the
    sync for a refresh: its snapshot holds the forgotten ids' actions (their
    Increments came after they were stored), so a retry of one, counted again,
    is decided by that refresh's handover or taken back by the late check.

    An Increment with an action id counted after a swap may report an action
    that swap's snapshot already holds (it arrived late): ``to_check`` and
    ``take_back`` let the late check (late.py) look it up there and take it
    back, and ``arrived`` wakes that check.
    """

    def __init__(
        self,
        limits: Limits | None = None,
        listener: ChangeListener | None = None,
        forgetting: Callable[[], None] = lambda: None,
    ) -> None:
        self._limits = limits or Limits()
        self._listener = listener
        self._forgetting = forgetting
        self._forgot = False  # an id was forgotten since the last swap
        self._lock = threading.Lock()
        self._campaigns: dict[int, CampaignCounters] = {}
        self._pages: Mapping[int, int] = {}  # action page id → campaign id, of the snapshot
        self._synced_at: datetime | None = None
        self._known: OrderedDict[int, None] = OrderedDict()  # ids that must not count again
        self._log: list[Arrival] = []  # Increments with an action id since the last swap
        self._carried: list[Arrival] = []  # re-applied by the last swap, not yet seen
        self._arrivals = 0  # Increments with an action id ever counted
        self._generation = 0  # swaps so far
        self._held: Held | None = None  # the snapshot of the last swap
        self._checked = 0  # the Increments with an action id numbered below were looked up
        self.arrived = threading.Event()  # set when one arrives to look up; the check clears it

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
            began_forgetting = inc.action_id is not None and self._remember(
                inc.action_id, Arrival(self._arrivals, inc, new_keys(current, inc))
            )
            self._campaigns[inc.campaign_id] = incremented(current, inc)
        if began_forgetting:
            self._forgetting()
        if self._listener is not None:
            self._listener.campaign_changed(inc.campaign_id)
        return True

    def _remember(self, action_id: int, arrival: Arrival | None = None) -> bool:
        """Note an action id that must not count again, and the Increment that counted it if
        any; the caller holds the lock. True when it is the first since the last swap to
        make the store forget an id (the caller then calls ``forgetting()``, unlocked)."""
        cap = self._limits.max_action_ids
        began_forgetting = False
        while len(self._known) >= cap:
            self._known.popitem(last=False)
            if not self._forgot:
                began_forgetting = self._forgot = True
        self._known[action_id] = None
        if arrival is None:
            return began_forgetting
        if len(self._log) >= cap:
            del self._log[: len(self._log) // 4 + 1]  # the oldest quarter: trimming stays rare
        self._log.append(arrival)
        self._arrivals += 1
        if self._held is not None and not self.arrived.is_set():
            self.arrived.set()
        return began_forgetting

    def remember_held(self, action_ids: Iterable[int]) -> None:
        """Remember action ids whose Increments were not counted because the held snapshot
        already holds their actions: a retry of one is refused like a counted one's."""
        with self._lock:
            began_forgetting = any([self._remember(action_id) for action_id in action_ids])
        if began_forgetting:
            self._forgetting()

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

    def to_check(self) -> Check | None:
        """The Increments with an action id counted since the last swap and not yet looked up
        in its snapshot; None when there are none (or no swap came yet)."""
        with self._lock:
            if self._held is None or self._checked >= self._arrivals:
                return None
            base = self._log[0].seq if self._log else self._arrivals
            fresh = self._log[max(0, self._checked - base) :]
            return Check(self._generation, self._held, fresh, self._arrivals)

    def take_back(self, check: Check, seen: Collection[int]) -> int:
        """End a check: the Increments whose action ids the snapshot holds are taken back
        (it counts them already) and the others stay. Returns how many were taken back.

        Refused, changing nothing, when a swap came since the check was taken: the
        new snapshot's handover has decided those Increments already.
        """
        taken = [a for a in check.arrivals if a.action_id in seen]
        with self._lock:
            if check.generation != self._generation:
                return 0
            self._checked = max(self._checked, check.upto)
            for arrival in taken:
                inc = arrival.increment
                counters = self._campaigns[inc.campaign_id]
                self._campaigns[inc.campaign_id] = decremented(counters, inc, arrival.added)
        if self._listener is not None:
            for campaign_id in {a.increment.campaign_id for a in taken}:
                self._listener.campaign_changed(campaign_id)
        return len(taken)

    def generation(self) -> int:
        """How many swaps came so far: a check taken before the last one is refused."""
        with self._lock:
            return self._generation

    def held(self) -> Held | None:
        """The snapshot the last swap installed (None before the first)."""
        with self._lock:
            return self._held

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
            self._generation += 1
            self._held = new.held
            self._checked = self._arrivals
            self._forgot = False
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
