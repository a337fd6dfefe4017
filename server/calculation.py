"""The full calculation of SPEC §2: every campaign's counters from Proca's tables.

PostgreSQL does all the counting; Python only receives rows already grouped by
campaign and key, so a calculation holds the GIL for a short time however many
actions the database has. All queries run in one read-only repeatable-read
transaction, so the figures of a campaign always agree with each other.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.rows import TupleRow

from .counters import CampaignCounters, Snapshot

# Pairs (action, supporter) that make deduplicated supporters (SPEC §2.1).
# `a.testing` deliberately plays no part here.
_COUNTED_PAIRS = """
    FROM actions a
    JOIN supporters s ON s.id = a.supporter_id
    JOIN action_pages p ON p.id = a.action_page_id
    WHERE s.processing_status = 3
      AND a.processing_status IN (3, 4)
      AND s.dupe_rank = 0
      AND s.fingerprint IS NOT NULL
"""

# One row per (campaign, fingerprint), keeping its first action: earliest
# inserted_at, ties broken by the lowest action id (SPEC §2.2). The org of that
# action's page gets the supporter; a NULL org counts in the total only.
SUPPORTERS_BY_ORG = f"""
    SELECT campaign_id, org_id, count(*)
    FROM (
        SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, p.org_id
        {_COUNTED_PAIRS}
        ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
    ) first_actions
    GROUP BY campaign_id, org_id
"""

# The same rule over the pairs whose supporter has an area (SPEC §2.3).
SUPPORTERS_BY_AREA = f"""
    SELECT campaign_id, area, count(*)
    FROM (
        SELECT DISTINCT ON (a.campaign_id, s.fingerprint) a.campaign_id, s.area
        {_COUNTED_PAIRS}
          AND s.area IS NOT NULL
        ORDER BY a.campaign_id, s.fingerprint, a.inserted_at, a.id
    ) first_actions_with_area
    GROUP BY campaign_id, area
"""

# Extra supporters per (campaign, org); pages whose extra is 0 add no key.
EXTRA_SUPPORTERS = """
    SELECT campaign_id, org_id, sum(extra_supporters)
    FROM action_pages
    WHERE extra_supporters <> 0
    GROUP BY campaign_id, org_id
"""

# Accepted, non-testing actions, with or without a supporter.
ACTIONS_BY_TYPE = """
    SELECT campaign_id, action_type, count(*)
    FROM actions
    WHERE processing_status IN (3, 4) AND NOT testing
    GROUP BY campaign_id, action_type
"""

CAMPAIGNS = "SELECT id FROM campaigns"


@dataclass
class _Builder:
    """Mutable counters of one campaign while the calculation's rows come in."""

    supporters: int = 0
    actions_by_type: dict[str, int] = field(default_factory=dict)
    supporters_by_area: dict[str, int] = field(default_factory=dict)
    supporters_by_org: dict[int, int] = field(default_factory=dict)

    def add_supporters(self, org_id: int | None, count: int) -> None:
        self.supporters += count
        if org_id is not None:
            self.supporters_by_org[org_id] = self.supporters_by_org.get(org_id, 0) + count

    def freeze(self) -> CampaignCounters:
        return CampaignCounters(
            self.supporters, self.actions_by_type, self.supporters_by_area, self.supporters_by_org
        )


def calculate(conn: psycopg.Connection[TupleRow], timeout_ms: int = 0) -> Snapshot:
    """Run the full calculation on an idle connection and return its snapshot.

    ``timeout_ms`` (0: none) cancels a calculation that runs longer, with
    psycopg.errors.QueryCanceled, so a slow database cannot stall the sync forever.
    """
    conn.isolation_level = IsolationLevel.REPEATABLE_READ
    conn.read_only = True
    campaigns: defaultdict[int, _Builder] = defaultdict(_Builder)
    rows_read = 0
    with conn.transaction(), conn.cursor() as cur:

        def rows(query: str) -> psycopg.Cursor[TupleRow]:
            nonlocal rows_read
            cur.execute(query)
            rows_read += cur.rowcount
            return cur

        # The snapshot is taken by the transaction's first query: this one.
        taken_at: datetime = next(cur.execute("SELECT now()"))[0]
        cur.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(timeout_ms))
        # Every campaign is in the result; one with no data keeps zeros.
        campaigns.update((campaign_id, _Builder()) for (campaign_id,) in rows(CAMPAIGNS))
        for campaign_id, org_id, count in rows(SUPPORTERS_BY_ORG):
            campaigns[campaign_id].add_supporters(org_id, count)
        for campaign_id, org_id, extra in rows(EXTRA_SUPPORTERS):
            campaigns[campaign_id].add_supporters(org_id, int(extra))
        for campaign_id, area, count in rows(SUPPORTERS_BY_AREA):
            campaigns[campaign_id].supporters_by_area[area] = count
        for campaign_id, action_type, count in rows(ACTIONS_BY_TYPE):
            campaigns[campaign_id].actions_by_type[action_type] = count
    return Snapshot({cid: b.freeze() for cid, b in campaigns.items()}, taken_at, rows_read)
