"""A sync interval's worth of Proca's writes, as one transaction: the change set of the scale
benchmark.

In 40 live campaigns: 1,000 new actions, each by a new supporter record (half of them a
fingerprint already in its campaign, ranked after it with ``dupe_rank`` as Proca ranks
them); 1,000 status changes (750 actions, 250 supporter records: confirmed, rejected,
delivered); 100 actions deleted (as a GDPR erasure removes them). Rows are stamped
``updated_at`` at ``stamp``, as Proca stamps its writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import TupleRow

CAMPAIGNS = 40
NEW_ACTIONS = 1_000
ACTION_STATUS_CHANGES = 750
SUPPORTER_STATUS_CHANGES = 250
DELETED_ACTIONS = 100
AREAS = ("DE", "FR", "PL", "IT", "ES", "NL", "BE", "AT", "SE", "PT", "GB", "IE", None)

# The new supporter records and one action each. A returning person's record is ranked one
# past the highest rank of its fingerprint in the campaign; a new fingerprint's record is 0.
NEW_ROWS = """
    WITH new AS (
        SELECT * FROM unnest(%(campaigns)s::bigint[], %(pages)s::bigint[],
                             %(fingerprints)s::bytea[], %(areas)s::varchar[], %(statuses)s::int[])
            WITH ORDINALITY AS n(campaign_id, page_id, fingerprint, area, status, i)
    ), ranked AS (
        SELECT new.*, coalesce((SELECT max(s.dupe_rank) + 1 FROM supporters s
                                WHERE s.fingerprint = new.fingerprint
                                  AND s.campaign_id = new.campaign_id), 0) AS dupe_rank
        FROM new
    ), records AS (
        INSERT INTO supporters (campaign_id, action_page_id, fingerprint, area, processing_status,
                                dupe_rank, inserted_at, updated_at)
        SELECT campaign_id, page_id, fingerprint, area, status, dupe_rank, %(at)s, %(at)s
        FROM ranked ORDER BY i
        RETURNING id, campaign_id, action_page_id, processing_status
    )
    INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id,
                         processing_status, testing, inserted_at, updated_at)
    SELECT r.id, (ARRAY['signature','share','mail2target','petition','donation'])[1 + r.id %% 5],
           r.campaign_id, r.action_page_id, r.processing_status, false, %(at)s, %(at)s
    FROM records r
"""

# Confirmed or accepted, rejected, delivered: every kind of move, most of them changing a figure.
ACTION_STATUSES = """
    UPDATE actions SET updated_at = %(at)s,
        processing_status = CASE WHEN processing_status = 3 AND id %% 3 = 0 THEN 4
                                 WHEN processing_status IN (3, 4) THEN 2
                                 ELSE 3 END
    WHERE id = ANY(%(ids)s)
"""
SUPPORTER_STATUSES = """
    UPDATE supporters SET updated_at = %(at)s,
        processing_status = CASE processing_status WHEN 3 THEN 2 ELSE 3 END
    WHERE id = ANY(%(ids)s)
"""


@dataclass(frozen=True)
class Applied:
    """What a change set did, and when it was committed (the database's clock)."""

    campaigns: list[int]
    deleted_in: set[int]  # the campaigns where actions were deleted
    committed_at: datetime


def newest_stamp(conn: psycopg.Connection[TupleRow]) -> datetime:
    """The newest ``updated_at`` of actions and supporters (two scans without an index)."""
    row = conn.execute(
        "SELECT greatest((SELECT max(updated_at) FROM actions),"
        " (SELECT max(updated_at) FROM supporters))"
    ).fetchone()
    assert row is not None
    stamp: datetime = row[0]
    return stamp


def apply(url: str, rng: random.Random, stamp: datetime) -> Applied:
    """Make one change set in ``url``, in one transaction, so that a refresh sees all or none."""
    with psycopg.connect(url) as conn:
        live = [c for (c,) in conn.execute("SELECT id FROM campaigns WHERE status = 0 ORDER BY id")]
        campaigns = sorted(rng.sample(live, CAMPAIGNS))
        pages: dict[int, list[int]] = {}
        for page_id, campaign_id in conn.execute(
            "SELECT id, campaign_id FROM action_pages WHERE campaign_id = ANY(%s) ORDER BY id",
            (campaigns,),
        ):
            pages.setdefault(campaign_id, []).append(page_id)
        # Through Proca's indexes: supporters by page, actions by campaign.
        records = conn.execute(
            "SELECT id, campaign_id, fingerprint FROM supporters WHERE action_page_id = ANY(%s)"
            " ORDER BY id",
            ([p for ids in pages.values() for p in ids],),
        ).fetchall()
        actions = conn.execute(
            "SELECT id, campaign_id FROM actions WHERE campaign_id = ANY(%s) ORDER BY id",
            (campaigns,),
        ).fetchall()
        known: dict[int, list[bytes]] = {}
        for _, campaign_id, fingerprint in records:
            if fingerprint is not None:
                known.setdefault(campaign_id, []).append(bytes(fingerprint))
        new = _new_records(rng, campaigns, pages, known)
        changed = rng.sample(actions, ACTION_STATUS_CHANGES + DELETED_ACTIONS)
        conn.execute(NEW_ROWS, {**new, "at": stamp})
        updated, deleted = changed[:ACTION_STATUS_CHANGES], changed[ACTION_STATUS_CHANGES:]
        conn.execute(ACTION_STATUSES, {"ids": [a for a, _ in updated], "at": stamp})
        conn.execute(
            SUPPORTER_STATUSES,
            {"ids": [r[0] for r in rng.sample(records, SUPPORTER_STATUS_CHANGES)], "at": stamp},
        )
        conn.execute("DELETE FROM actions WHERE id = ANY(%s)", ([a for a, _ in deleted],))
        conn.commit()
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return Applied(campaigns, {c for _, c in deleted}, row[0])


def _new_records(
    rng: random.Random,
    campaigns: list[int],
    pages: dict[int, list[int]],
    known: dict[int, list[bytes]],
) -> dict[str, list[object]]:
    """The new supporter records' columns: a campaign each, in turn; every second one a
    fingerprint already in its campaign (each returning once), the others new ones."""
    columns: dict[str, list[object]] = {
        key: [] for key in ("campaigns", "pages", "fingerprints", "areas", "statuses")
    }
    returning = {c: rng.sample(known[c], NEW_ACTIONS // CAMPAIGNS // 2 + 1) for c in campaigns}
    for i in range(NEW_ACTIONS):
        campaign_id = campaigns[i % CAMPAIGNS]
        # Every second record of a campaign, the first one in even campaigns, the second in odd.
        comes_back = (i // CAMPAIGNS + i % CAMPAIGNS) % 2 == 1
        fingerprint = returning[campaign_id].pop() if comes_back else rng.randbytes(16)
        columns["campaigns"].append(campaign_id)
        columns["pages"].append(rng.choice(pages[campaign_id]))
        columns["fingerprints"].append(fingerprint)
        columns["areas"].append(rng.choice(AREAS))
        columns["statuses"].append(3 if rng.random() < 0.9 else 0)  # most accepted at once
    return columns
