"""Where a full calculation's time goes: EXPLAIN (ANALYZE, BUFFERS) of its queries and of
Proca 3.4's, with the settings each runs with, or others given with --set; or, with --time,
the queries timed alternately under several sets of settings.

    python bench/explain.py URL                           # every query, as each runs
    python bench/explain.py URL --query ours --set work_mem=1GB --set jit=on
    python bench/explain.py URL --time 3 --query ours --query proca-orgs \
        --variant "" --variant work_mem=1GB --variant parallel_leader_participation=on

proca-stats' queries run with the settings of its calculation (server/sync/calculation.py,
``SETTINGS``) unless --plain; Proca's with the server's. The plan of each is printed whole,
then the lines that say what spilled, which workers ran and what the query took.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import psycopg

from proca_stats.server.sync.calculation import ACTIONS_BY_TYPE, SETTINGS, SUPPORTERS

HERE = Path(__file__).resolve().parent
PROCA = (HERE / "proca34.sql").read_text().split("----")
QUERIES = {
    "ours": (SUPPORTERS, True),
    "ours-actions": (ACTIONS_BY_TYPE.format(where=""), True),
    "proca-orgs": (PROCA[0], False),
    "proca-areas": (PROCA[1], False),
    "proca-actions": (PROCA[3], False),
    "floor": ((HERE / "floor.sql").read_text(), False),
}
TELLING = re.compile(
    r"Sort Method|Workers (Planned|Launched)|temp (read|written)|Execution Time|Disk:"
    r"|Parallel|Gather|WindowAgg|Unique|HashAggregate|GroupAggregate|Hash Join|Merge Join"
)


def run(url: str, name: str, settings: list[str], plain: bool, explain: bool) -> list[str]:
    """Run the query ``name`` in a read-only transaction with those settings; with
    ``explain``, returns its plan."""
    query, ours = QUERIES[name]
    with psycopg.connect(url) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        for setting in SETTINGS if ours and not plain else ():
            conn.execute(setting.encode())
        for setting in settings:
            key, value = setting.split("=", 1)
            conn.execute(f"SET LOCAL {key} = '{value}'".encode())
        if not explain:
            conn.execute(query.encode()).fetchall()
            return []
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, SETTINGS) {query}".encode()).fetchall()
    return [row[0] for row in rows]


def show(url: str, name: str, settings: list[str], plain: bool) -> None:
    plan = run(url, name, settings, plain, explain=True)
    print(f"===== {name} {' '.join(settings)}", flush=True)
    print("\n".join(plan))
    print(f"----- {name}: what spilled, which workers ran, what it took")
    print("\n".join(line for line in plan if TELLING.search(line)), flush=True)


def timings(url: str, names: list[str], variants: list[str], rounds: int, plain: bool) -> None:
    """Each query under each variant (comma-separated NAME=VALUE settings), in turn, ``rounds``
    times; the median and every run of each."""
    cases = [(name, variant) for name in names for variant in variants]
    times: dict[tuple[str, str], list[float]] = {case: [] for case in cases}
    for _ in range(rounds):
        for name, variant in cases:
            started = time.perf_counter()
            run(url, name, [v for v in variant.split(",") if v], plain, explain=False)
            times[name, variant].append(time.perf_counter() - started)
            print(f"  {name} [{variant}] {times[name, variant][-1]:.1f} s", flush=True)
    for (name, variant), runs in times.items():
        each = " ".join(f"{t:.1f}" for t in runs)
        print(
            f"{name:>13} [{variant or 'as it runs'}]: median {statistics.median(runs):.1f} s"
            f" (runs {each})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the data set's database")
    parser.add_argument("--query", action="append", choices=sorted(QUERIES), default=[])
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--plain", action="store_true", help="not the calculation's settings")
    parser.add_argument("--time", type=int, metavar="ROUNDS", help="time instead of EXPLAIN")
    parser.add_argument(
        "--variant", action="append", default=[], metavar="NAME=VALUE,…", help="with --time"
    )
    args = parser.parse_args()
    names = args.query or list(QUERIES)
    if args.time:
        timings(args.url, names, args.variant or [",".join(args.set)], args.time, args.plain)
        return
    for name in names:
        show(args.url, name, args.set, args.plain)


if __name__ == "__main__":
    main()
