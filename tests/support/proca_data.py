"""Rows in Proca's tables, written the way Proca writes them, for tests to count."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

BASE_TIME = datetime(2026, 1, 1, 12, 0, 0)


class ProcaData:
    """Inserts orgs, campaigns, pages, supporters and actions; every method returns the new id."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self._clock = 0

    def _insert(self, table: str, **values: object) -> int:
        columns = ", ".join(values)
        marks = ", ".join(["%s"] * len(values))
        query = f"INSERT INTO {table} ({columns}) VALUES ({marks}) RETURNING id"
        row = self.conn.execute(query.encode(), list(values.values())).fetchone()
        assert row is not None
        return int(row[0])

    def actions_out_of_reach(self) -> None:
        """Number the next actions far beyond any action id a fuzzing test draws in practice,
        so that no fuzzed Increment names a stored action: the late check would take such an
        Increment back a look-up later (test_late_increments.py's subject), and a model of
        the answers would have to guess when."""
        self.conn.execute("SELECT setval(pg_get_serial_sequence('actions', 'id'), 7777777777000)")

    def org(self, name: str = "org") -> int:
        return self._insert("orgs", name=name, title=name)

    def campaign(self, org_id: int | None = None, status: int = 0) -> int:
        return self._insert("campaigns", name="c", title="c", org_id=org_id, status=status)

    def page(self, campaign_id: int, org_id: int | None, extra_supporters: int = 0) -> int:
        return self._insert(
            "action_pages",
            name="p",
            campaign_id=campaign_id,
            org_id=org_id,
            extra_supporters=extra_supporters,
        )

    def supporter(
        self,
        campaign_id: int,
        page_id: int,
        fingerprint: bytes | None,
        *,
        area: str | None = None,
        status: int = 3,
        dupe_rank: int | None = 0,
    ) -> int:
        return self._insert(
            "supporters",
            campaign_id=campaign_id,
            action_page_id=page_id,
            fingerprint=fingerprint,
            area=area,
            processing_status=status,
            dupe_rank=dupe_rank,
        )

    def action(
        self,
        campaign_id: int,
        page_id: int,
        supporter_id: int | None,
        *,
        action_type: str = "signature",
        status: int = 3,
        testing: bool = False,
        at: datetime | None = None,
    ) -> int:
        """An action; without ``at`` each one is a second later than the one before."""
        if at is None:
            self._clock += 1
            at = BASE_TIME + timedelta(seconds=self._clock)
        return self._insert(
            "actions",
            campaign_id=campaign_id,
            action_page_id=page_id,
            supporter_id=supporter_id,
            action_type=action_type,
            processing_status=status,
            testing=testing,
            inserted_at=at,
            updated_at=at,
        )

    def person(
        self,
        campaign_id: int,
        page_id: int,
        fingerprint: bytes,
        *,
        area: str | None = None,
        action_type: str = "signature",
        at: datetime | None = None,
    ) -> int:
        """An accepted supporter with one accepted action: one person; returns the action."""
        supporter = self.supporter(campaign_id, page_id, fingerprint, area=area)
        return self.action(campaign_id, page_id, supporter, action_type=action_type, at=at)
