"""Demo data: a small Proca-shaped data set (demo.sql), and a trickle of simulated actions.

On an empty database every figure is 0, and an Increment's figures last only until the next
sync finds no rows behind them. The demo gives the counters something true to count: the data
set, loaded inside PostgreSQL, and then a few actions a second, each stored as Proca stores an
accepted action and then announced with Increment as Proca does, so that the figures move and
every sync agrees with them.
"""

from __future__ import annotations

import logging
import random
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

import psycopg

from proca_stats.client import StatsClient, StatsError
from proca_stats.server.database import init_schema
from proca_stats.server.database_check import cause

log = logging.getLogger(__name__)

DEMO_SQL = (Path(__file__).parent / "demo.sql").read_text()
PROCA_TABLES = ("orgs", "campaigns", "action_pages", "supporters", "actions")
AREAS = ("DE", "DE", "DE", "FR", "FR", "IT", "ES", "PL", "NL", "AT", "BE", "SE")
NEW_SUPPORTER_SHARE = 0.7  # of the simulated actions; the others are existing supporters'
INTERVAL = (0.15, 0.6)  # seconds between two simulated actions, drawn evenly: about 3 a second


class DemoRefused(Exception):
    """The database holds Proca rows already: the demo would mix with them."""


@dataclass(frozen=True)
class Loaded:
    """What a load added."""

    campaigns: int
    supporters: int
    actions: int


def holds_rows(conn: psycopg.Connection) -> bool:
    """Whether any of Proca's tables holds a row."""
    exists = " OR ".join(f"EXISTS (SELECT FROM {table})" for table in PROCA_TABLES)
    row = conn.execute(f"SELECT {exists}".encode()).fetchone()
    return bool(row and row[0])


def load_demo(url: str, *, force: bool = False) -> Loaded:
    """Create Proca's tables where missing and add the demo data set, in one transaction.

    Refused (DemoRefused) when the tables hold rows already, unless ``force``: then the demo
    is added beside them, never in their place.
    """
    init_schema(url)
    with psycopg.connect(url) as conn:
        if holds_rows(conn) and not force:
            raise DemoRefused(
                "the database holds Proca rows already; --force adds the demo beside them"
            )
        before = _counts(conn)
        conn.execute(DEMO_SQL.encode())
        after = _counts(conn)
    return Loaded(*(a - b for a, b in zip(after, before, strict=True)))


def _counts(conn: psycopg.Connection) -> tuple[int, int, int]:
    """Campaigns, supporters and actions in the database."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM supporters),"
        " (SELECT count(*) FROM actions)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


@dataclass(frozen=True)
class Page:
    campaign_id: int
    page_id: int
    org_id: int
    action_type: str  # the campaign's commonest action type


# The live campaigns' pages that have an org, each with its campaign's commonest action type.
LIVE_PAGES = """
SELECT p.campaign_id, p.id, p.org_id,
       coalesce((SELECT mode() WITHIN GROUP (ORDER BY a.action_type) FROM actions a
                 WHERE a.campaign_id = p.campaign_id AND a.supporter_id IS NOT NULL),
                'signature')
FROM action_pages p JOIN campaigns c ON c.id = p.campaign_id
WHERE c.status = 0 AND p.org_id IS NOT NULL
ORDER BY p.id
"""

# An accepted, ranked supporter of the campaign, with the org of their page, for an action
# by someone who signed before.
SOMEONE = """
SELECT s.id, s.action_page_id, p.org_id, s.area FROM supporters s
JOIN action_pages p ON p.id = s.action_page_id
WHERE s.campaign_id = %s AND s.processing_status = 3 AND s.dupe_rank = 0
  AND p.org_id IS NOT NULL
ORDER BY random() LIMIT 1
"""

ACTION = """
INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id, processing_status)
VALUES (%s, %s, %s, %s, 3) RETURNING id
"""


class Trickle:
    """Simulated actions on the live campaigns until stopped: each stored (supporter and
    action, accepted, in one transaction), then announced with Increment to ``target``."""

    def __init__(self, url: str, target: str, *, token: str | None = None) -> None:
        self._url = url
        self._client = StatsClient(target, token=token)
        self._random = random.Random()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proca-stats-demo", daemon=True)
        self.sent = 0  # actions stored and announced

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        failing = False  # said once when the actions start failing, once when they work again
        while not self._stop.wait(self._random.uniform(*INTERVAL)):
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self._url, autocommit=True)
                self._act(conn)
            except (psycopg.Error, StatsError) as error:
                if not failing:
                    log.warning("demo: simulated actions fail: %s", cause(error))
                failing = True
                continue
            if failing:
                log.info("demo: simulated actions work again")
            failing = False
        if conn is not None:
            conn.close()

    def _act(self, conn: psycopg.Connection) -> None:
        pages = [Page(*row) for row in conn.execute(LIVE_PAGES)]
        if not pages:
            return  # no live campaign: nothing to act on
        page = self._random.choice(pages)
        new_supporter = self._random.random() < NEW_SUPPORTER_SHARE
        someone = None if new_supporter else conn.execute(SOMEONE, (page.campaign_id,)).fetchone()
        with conn.transaction():
            if someone is None:  # a new supporter, or the campaign has nobody to act again
                new_supporter = True
                area: str | None = self._random.choice(AREAS)
                org_id, page_id, action_type = page.org_id, page.page_id, page.action_type
                row = conn.execute(
                    "INSERT INTO supporters (campaign_id, action_page_id, fingerprint, area,"
                    " processing_status, dupe_rank) VALUES (%s, %s, %s, %s, 3, 0) RETURNING id",
                    (page.campaign_id, page_id, secrets.token_bytes(16), area),
                ).fetchone()
            else:
                supporter_id, page_id, org_id, area = someone
                action_type = "share"
                row = (supporter_id,)
            assert row is not None
            stored = conn.execute(ACTION, (row[0], action_type, page.campaign_id, page_id))
            (action_id,) = stored.fetchone() or (None,)
        self._client.increment(
            page.campaign_id,
            org_id,
            action_type,
            area=area,
            new_supporter=new_supporter,
            action_id=action_id,
        )
        self.sent += 1
