"""The figures of one campaign, and how an accepted action changes them.

Counters are never changed in place: Increment builds a new value and the store
swaps it in. A reader that took a reference under the store's lock can then
turn it into a response without holding the lock, and never sees half an update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar


@dataclass(frozen=True, slots=True)
class CampaignCounters:
    """The counters of one campaign. Treat the maps as read-only once published."""

    supporters: int = 0
    actions_by_type: dict[str, int] = field(default_factory=dict)
    supporters_by_area: dict[str, int] = field(default_factory=dict)
    supporters_by_org: dict[int, int] = field(default_factory=dict)


NO_COUNTERS = CampaignCounters()  # what an unknown campaign has


@dataclass(frozen=True, slots=True)
class Increment:
    """One accepted action, already validated (see validation.py)."""

    campaign_id: int
    org_id: int
    action_type: str
    area: str | None
    new_supporter: bool
    action_id: int | None = None  # actions.id, when the caller gave it


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The result of one calculation: every campaign's counters at ``taken_at``.

    ``increments_before`` is how many Increments with an action id the store
    had counted before the snapshot was taken (see handover.py). ``pages`` maps
    each action page's id to its campaign's, as of the same snapshot, so that a
    widget that knows only its page is answered with the figures swapped in with it.
    """

    campaigns: dict[int, CampaignCounters]
    taken_at: datetime
    increments_before: int = 0
    pages: Mapping[int, int] = field(default_factory=dict)


Key = TypeVar("Key", str, int)


def _plus(counts: dict[Key, int], key: Key, added: int) -> dict[Key, int]:
    new = dict(counts)
    new[key] = new.get(key, 0) + added
    return new


# Which keys an Increment added to its campaign's maps (see ``new_keys``), as bits.
NEW_ACTION_TYPE, NEW_AREA, NEW_ORG = 1, 2, 4


def new_keys(counters: CampaignCounters, inc: Increment) -> int:
    """The keys ``incremented(counters, inc)`` adds, as NEW_* bits: what taking the
    Increment back must remove again, so that the figures are as if it never counted."""
    return (
        (NEW_ACTION_TYPE if inc.action_type not in counters.actions_by_type else 0)
        | (NEW_AREA if inc.area and inc.area not in counters.supporters_by_area else 0)
        | (NEW_ORG if inc.org_id not in counters.supporters_by_org else 0)
    )


def incremented(counters: CampaignCounters, inc: Increment) -> CampaignCounters:
    """The counters after one accepted action, as Proca's Stats.increment counts it.

    An existing supporter acting again still creates the org and area keys
    (with 0), so the maps show every org and area that took part.
    """
    added = 1 if inc.new_supporter else 0
    return CampaignCounters(
        supporters=counters.supporters + added,
        actions_by_type=_plus(counters.actions_by_type, inc.action_type, 1),
        supporters_by_area=(
            _plus(counters.supporters_by_area, inc.area, added)
            if inc.area
            else counters.supporters_by_area
        ),
        supporters_by_org=_plus(counters.supporters_by_org, inc.org_id, added),
    )


def _minus(counts: dict[Key, int], key: Key, taken: int, added_key: bool) -> dict[Key, int]:
    new = dict(counts)
    new[key] = new.get(key, 0) - taken
    if added_key and new[key] == 0:
        del new[key]
    return new


def decremented(counters: CampaignCounters, inc: Increment, added: int) -> CampaignCounters:
    """The counters without an Increment ``incremented`` counted earlier.

    ``added`` is what ``new_keys`` said when it was counted: a key the
    Increment added goes again once its count is back at 0, so a campaign
    whose figures already held the action is left as they held it.
    """
    taken = 1 if inc.new_supporter else 0
    return CampaignCounters(
        supporters=counters.supporters - taken,
        actions_by_type=_minus(
            counters.actions_by_type, inc.action_type, 1, bool(added & NEW_ACTION_TYPE)
        ),
        supporters_by_area=(
            _minus(counters.supporters_by_area, inc.area, taken, bool(added & NEW_AREA))
            if inc.area
            else counters.supporters_by_area
        ),
        supporters_by_org=_minus(
            counters.supporters_by_org, inc.org_id, taken, bool(added & NEW_ORG)
        ),
    )
