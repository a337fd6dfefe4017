"""A campaign's figures kept in their parts, so that a refresh can change them by deltas.

The published counters (CampaignCounters) add extra supporters into the
totals; a delta cannot be applied to such a sum without knowing which part it
belongs to, nor can it tell whether an org key should stay when its count
falls to zero. So the calculation keeps the parts apart, exactly as the full
calculation finds them, and derives the counters from them:

- an org key exists while the org has deduplicated supporters or a page with
  extra supporters (even when they add up to 0), as in the full calculation;
- area and action-type keys exist while their count is positive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar

from proca_stats.server.state.counters import CampaignCounters

# Where one deduplicated supporter is credited: the org of its first action's
# page (None: a page without org) and the area of its first action with an
# area (None: no area). None for the whole credit: not counted at all.
Credit = tuple[int | None, str | None]


Key = TypeVar("Key", str, int)


def _add(counts: dict[Key, int], key: Key, n: int) -> None:
    """Add to a count, dropping the key when it reaches zero."""
    total = counts.get(key, 0) + n
    if total:
        counts[key] = total
    else:
        counts.pop(key, None)


@dataclass
class CampaignTally:
    """The parts of one campaign's figures, as of one database snapshot."""

    supporters: int = 0  # deduplicated supporters (extra supporters not included)
    by_org: dict[int, int] = field(default_factory=dict)  # deduplicated, positive counts
    by_area: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    extra: dict[int | None, int] = field(default_factory=dict)  # org → sum, pages with extra ≠ 0
    # Accepted actions (status 3 or 4), testing ones included: every action that can count
    # in a figure. It is not published; it lets a refresh without the earlier snapshot find
    # the campaigns that lost such an action to a delete (refresh.py, after a warm start).
    paired: int = 0

    def credit(self, credit: Credit, n: int) -> None:
        """Count ``n`` supporters (negative: uncount) with the given org and area."""
        org_id, area = credit
        self.supporters += n
        if org_id is not None:
            _add(self.by_org, org_id, n)
        if area is not None:
            _add(self.by_area, area, n)

    def count_actions(self, action_type: str, n: int) -> None:
        _add(self.actions, action_type, n)

    def copy(self) -> CampaignTally:
        """A tally to change without touching this one (whose counters may be out)."""
        return CampaignTally(
            self.supporters,
            dict(self.by_org),
            dict(self.by_area),
            dict(self.actions),
            dict(self.extra),
            self.paired,
        )

    def counters(self) -> CampaignCounters:
        """The published figures: extra supporters added to the total and to their org.

        The maps are shared with this tally, not copied (a campaign's figures
        are held twice, in the store and here): a tally is never changed once
        its counters are out; a refresh changes a copy (refresh.py).
        """
        by_org = self.by_org
        if any(org_id is not None for org_id in self.extra):
            by_org = dict(self.by_org)
            for org_id, extra in self.extra.items():
                if org_id is not None:
                    by_org[org_id] = by_org.get(org_id, 0) + extra
        return CampaignCounters(
            self.supporters + sum(self.extra.values()), self.actions, self.by_area, by_org
        )
