"""The pieces of a refresh's delta: what the changed rows touch, how the held tallies change,
and the figures to publish (refresh.py puts them together)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import COUNTED, Cursor, Key, Page, extra_supporters
from proca_stats.server.sync.tally import CampaignTally, Credit

# Changed rows past which a full calculation is cheaper (refresh.py): both must be passed.
MANY_CHANGES = 10_000
MANY_CHANGES_SHARE = 0.02
# The planner's estimate of the actions table's size (-1 before it was ever analyzed).
ACTIONS_ESTIMATE = "SELECT reltuples FROM pg_class WHERE oid = 'actions'::regclass"

# What the changed rows touch, in the snapshot asked: one row per changed action
# (its campaign, type, whether it counts, whether it is accepted, and its key when it
# makes a counted pair) and one per counted pair of a changed supporter (its key only).
# A key's figures depend on its counted pairs only: a row that makes no counted pair in
# either snapshot cannot change them, so it gives no key on either side.
# Arrays go in binary (%b): a thousand ids or fingerprints cost nothing to send.
TOUCHED = f"""
    SELECT true, a.campaign_id, a.action_type, a.processing_status IN (3, 4) AND NOT a.testing,
           a.processing_status IN (3, 4), CASE WHEN {COUNTED} THEN s.fingerprint END
    FROM actions a LEFT JOIN supporters s ON s.id = a.supporter_id
    WHERE a.id = ANY(%(actions)b)
    UNION ALL
    SELECT false, a.campaign_id, NULL, NULL, NULL, s.fingerprint
    FROM supporters s JOIN actions a ON a.supporter_id = s.id
    WHERE s.id = ANY(%(supporters)b) AND {COUNTED}
"""

# (campaign id, action type, whether it counts, whether it is accepted: tally.paired)
ActionKind = tuple[int, str, bool, bool]
Touched = tuple[set[Key], Counter[ActionKind]]


@dataclass
class Delta:
    """A refresh's changes to the held tallies: copies of the tallies it changes."""

    tallies: dict[int, CampaignTally]
    touched: set[int] = field(default_factory=set)

    def tally(self, campaign_id: int) -> CampaignTally:
        """The campaign's tally to change, copied on first write (the held one's counters
        are out, so it never changes)."""
        if campaign_id not in self.touched:
            self.touched.add(campaign_id)
            self.tallies[campaign_id] = (self.tallies.get(campaign_id) or CampaignTally()).copy()
        return self.tallies[campaign_id]

    def credit(self, keys: set[Key], before: dict[Key, Credit], after: dict[Key, Credit]) -> None:
        """Move each key's supporter from where the old snapshot credits it to where the
        new one does."""
        for key in keys:
            was, now = before.get(key), after.get(key)
            if was != now:
                if was is not None:
                    self.tally(key[0]).credit(was, -1)
                if now is not None:
                    self.tally(key[0]).credit(now, 1)

    def count(self, kinds: Counter[ActionKind], sign: int, campaigns: set[int]) -> None:
        """Add (``sign`` 1) or take away (-1) the changed actions of these campaigns."""
        for (campaign_id, action_type, counts, accepted), n in kinds.items():
            if campaign_id in campaigns:
                if counts:
                    self.tally(campaign_id).count_actions(action_type, sign * n)
                if accepted:
                    self.tally(campaign_id).paired += sign * n


def moved(
    old_statuses: dict[int, int],
    old_pages: dict[int, Page],
    statuses: dict[int, int],
    pages: dict[int, Page],
    live: int,
) -> set[int]:
    """Campaigns to recount whole: new, just live again, or whose pages moved."""
    recount = {c for c, s in statuses.items() if s == live and old_statuses.get(c) != live}
    for page_id in old_pages.keys() | pages.keys():
        page_was, page_now = old_pages.get(page_id), pages.get(page_id)
        if page_was is None or page_now is None or page_was[:2] != page_now[:2]:
            recount.update(p[0] for p in (page_was, page_now) if p is not None)
    return recount


def published(
    old_figures: dict[int, CampaignCounters],
    old_pages: dict[int, Page],
    tallies: dict[int, CampaignTally],
    pages: dict[int, Page],
    changed: set[int],
) -> dict[int, CampaignCounters]:
    """The figures to publish: the held ones, with those of ``changed`` campaigns (whose
    tallies are the refresh's own) rebuilt and the extra supporters of the pages (read
    whole) added."""
    extra = extra_supporters(pages.values())
    old_extra = extra_supporters(old_pages.values())
    rebuilt = set(changed)
    for campaign_id in extra.keys() | old_extra.keys():
        if extra.get(campaign_id) != old_extra.get(campaign_id):
            rebuilt.add(campaign_id)
    figures = dict(old_figures)
    for campaign_id in old_figures.keys() - tallies.keys():
        del figures[campaign_id]
    for campaign_id in rebuilt | (tallies.keys() - figures.keys()):
        if campaign_id in tallies:
            if campaign_id not in changed:
                tallies[campaign_id] = tallies[campaign_id].copy()
            tallies[campaign_id].extra = extra.get(campaign_id, {})
            figures[campaign_id] = tallies[campaign_id].counters()
    return figures


def many(cur: Cursor, changed: int) -> bool:
    """Whether so many rows changed that a full calculation costs less than a refresh."""
    if changed <= MANY_CHANGES:
        return False
    estimate = next(cur.execute(ACTIONS_ESTIMATE))[0]
    return bool(changed > MANY_CHANGES_SHARE * estimate)


def touched(cur: Cursor, changed: tuple[list[int], list[int]]) -> Touched:
    """The keys the changed rows (action ids, supporter ids) make counted pairs in, and the
    changed actions by kind."""
    actions, supporters = changed
    keys: set[Key] = set()
    kinds: Counter[ActionKind] = Counter()
    if not actions and not supporters:
        return keys, kinds
    rows = cur.execute(TOUCHED, {"actions": actions, "supporters": supporters})
    for is_action, campaign_id, action_type, counts, accepted, fingerprint in rows:
        if fingerprint is not None:
            keys.add((campaign_id, bytes(fingerprint)))
        if is_action:
            kinds[campaign_id, action_type, counts, accepted] += 1
    return keys, kinds


def together(parts_touched: list[Touched]) -> Touched:
    """The parts' touched keys and changed actions, as one."""
    keys: set[Key] = set()
    kinds: Counter[ActionKind] = Counter()
    for part_keys, part_kinds in parts_touched:
        keys |= part_keys
        kinds.update(part_kinds)
    return keys, kinds
