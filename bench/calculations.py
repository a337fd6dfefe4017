"""The full calculation timed against Proca 3.4's queries (proca34.sql) and against a bare
scan of the join (floor.sql), on the same data, after checking that the figures are identical."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.calculation import calculate

HERE = Path(__file__).resolve().parent


def say(text: str = "") -> None:
    print(text, flush=True)


def proca34(url: str) -> dict[int, CampaignCounters]:
    """Proca 3.4's queries, in one repeatable-read transaction, as figures."""
    orgs_q, areas_q, extra_q, actions_q = (HERE / "proca34.sql").read_text().split("----")
    totals: dict[int, int] = {}
    orgs: dict[int, dict[int, int]] = {}
    areas: dict[int, dict[str, int]] = {}
    actions: dict[int, dict[str, int]] = {}
    with psycopg.connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        campaigns = [c for (c,) in conn.execute("SELECT id FROM campaigns")]
        for query in (orgs_q, extra_q):
            for campaign_id, org_id, count in conn.execute(query.encode()):
                totals[campaign_id] = totals.get(campaign_id, 0) + int(count)
                if org_id is not None:
                    by_org = orgs.setdefault(campaign_id, {})
                    by_org[org_id] = by_org.get(org_id, 0) + int(count)
        for campaign_id, area, count in conn.execute(areas_q.encode()):
            areas.setdefault(campaign_id, {})[area] = count
        for campaign_id, action_type, count in conn.execute(actions_q.encode()):
            actions.setdefault(campaign_id, {})[action_type] = count
    return {
        c: CampaignCounters(totals.get(c, 0), actions.get(c, {}), areas.get(c, {}), orgs.get(c, {}))
        for c in campaigns
    }


def ours(url: str) -> dict[int, CampaignCounters]:
    with psycopg.connect(url) as conn:
        return calculate(conn).campaigns


def floor(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute((HERE / "floor.sql").read_text().encode()).fetchall()


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


@dataclass(frozen=True)
class FullTimes:
    """Medians, in seconds, of the three timings."""

    ours: float
    proca: float
    floor: float


def full_calculation(
    url: str, rounds: int, cpu_seconds: Callable[[], float] | None = None
) -> FullTimes:
    """Check that proca-stats' figures are Proca 3.4's for every campaign, then time (a) the
    full calculation, (b) Proca 3.4's queries and (c) the floor alternately, ``rounds`` times.

    ``cpu_seconds``, when PostgreSQL's CPU time can be read, also gives each one's CPU time.
    """
    ours_figures, proca_figures = ours(url), proca34(url)  # warm-up, and the identity check
    differing = sorted(
        c
        for c in ours_figures.keys() | proca_figures.keys()
        if ours_figures.get(c) != proca_figures.get(c)
    )
    counted = f"{len(ours_figures):,} campaigns" + (
        f", {len(differing):,} differ" if differing else ""
    )
    say(f"  figures identical to Proca 3.4's queries: {not differing} ({counted})")
    if differing:
        sys.exit(f"bench: the figures differ from Proca 3.4's (campaigns {differing[:10]}): a bug")
    runs = {"a": lambda: ours(url), "b": lambda: proca34(url), "c": lambda: floor(url)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            cpu_before = cpu_seconds() if cpu_seconds else 0.0
            times[key].append(timed(run))
            cpu[key].append(cpu_seconds() - cpu_before if cpu_seconds else 0.0)
    a, b, c = (statistics.median(times[k]) for k in "abc")
    names = {
        "a": "(a) proca-stats full calculation:",
        "b": "(b) Proca 3.4's queries:         ",
        "c": "(c) bare join scan (floor):      ",
    }
    for key, name in names.items():
        median = statistics.median(times[key])
        line = f"  {name} {median:7.3f} s   runs {runs_text(times[key])}"
        if cpu_seconds:
            line += f"   PostgreSQL's CPU: median {statistics.median(cpu[key]):.1f} s"
        say(line)
    say(f"  a/b = {a / b:.2f}  (goal <= 0.50)    a/c = {a / c:.2f}")
    if cpu_seconds:
        ratio = statistics.median(cpu["a"]) / statistics.median(cpu["b"])
        say(f"  PostgreSQL's CPU time, a/b = {ratio:.2f}")
    return FullTimes(a, b, c)


def runs_text(values: list[float]) -> str:
    return " ".join(f"{v:.3f}" for v in values)
