"""Warm restarts: the held figures written to a state file, read back at the next start.

After each settled refresh the server writes the figures of its held snapshot, in
their parts (tallies, campaign statuses, pages), with what continues from them: the
change source's mark (the feed's slot position, or updated_at marks), the action
ids the snapshot confirmed and the Increments counted on top of it. At the next
start those figures are served at once and the first refresh brings them up to date.

That first refresh has no held snapshot to compare keys in: the old snapshot died
with the old process. It recounts whole every campaign a change may have touched
(``campaigns_changed``), found in the new snapshot:

- the campaign of every changed action still there, and the campaigns of the
  actions of every changed supporter;
- a deleted action leaves only its id, and a row's old campaign is not in the
  feed; but an action that can count in a figure is accepted (status 3 or 4), so
  a campaign that lost one has fewer accepted actions than its tally's ``paired``
  count says (every action it gained is itself a changed row of that campaign,
  recounted anyway). One aggregate over the actions, run only when actions
  changed, finds those campaigns.

The file (statefile.py) is trusted only when it is whole, of this format and of this
database; anything else is one warning and a cold start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from proca_stats.server.sync.calculation import Cursor, Page
from proca_stats.server.sync.tally import CampaignTally

CAMPAIGNS_OF = """
    SELECT campaign_id FROM actions WHERE id = ANY(%(actions)b)
    UNION
    SELECT campaign_id FROM actions WHERE supporter_id = ANY(%(supporters)b)
"""
ACCEPTED = """
    SELECT campaign_id, count(*) FROM actions WHERE processing_status IN (3, 4)
    GROUP BY campaign_id
"""
# Which database a file belongs to: the cluster's identifier, the database's name and oid
# (a database dropped and made again under the same name has another oid).
IDENTITY = """
    SELECT system_identifier::text, current_database(),
           (SELECT oid::bigint FROM pg_database WHERE datname = current_database())
    FROM pg_control_system()
"""


@dataclass(frozen=True)
class Identity:
    system_identifier: str
    name: str
    oid: int


@dataclass(frozen=True)
class HeldFigures:
    """A held snapshot's figures and what continues from them, as a state file keeps them."""

    taken_at: datetime
    tallies: dict[int, CampaignTally]
    statuses: dict[int, int]
    pages: dict[int, Page]
    source: dict[str, Any]  # the change source's mark, as JSON
    full_age: float  # seconds since the last full calculation started
    stale: frozenset[int]  # closed or ignored campaigns whose changes wait


def identify(cur: Cursor) -> Identity:
    system_identifier, name, oid = next(cur.execute(IDENTITY))
    return Identity(system_identifier, name, oid)


def campaigns_changed(
    cur: Cursor, actions: list[int], supporters: list[int], tallies: dict[int, CampaignTally]
) -> set[int]:
    """The campaigns whose figures the changed rows may have changed, without the old
    snapshot (see the module's docstring)."""
    found = {
        row[0] for row in cur.execute(CAMPAIGNS_OF, {"actions": actions, "supporters": supporters})
    }
    if actions:
        accepted: dict[int, int] = dict(cur.execute(ACCEPTED).fetchall())
        for campaign_id in accepted.keys() | tallies.keys():
            tally = tallies.get(campaign_id)
            if accepted.get(campaign_id, 0) != (tally.paired if tally else 0):
                found.add(campaign_id)
    return found
