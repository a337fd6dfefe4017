"""proca-stats beside a Proca database many times the benchmark's size, on exactly Proca's indexes.

    python bench/scale.py --scale 10                     # a PostgreSQL of its own
    python bench/scale.py --scale 10 --database-url URL  # an existing one (feed: wal_level logical)

``--scale 10`` is 5,000 campaigns, 10,000,000 supporter records and 15,000,000
actions (bench/dataset.sql, ten times bench/run.py's data set), with Proca's
indexes and no others (bench/proca_indexes.sql). The data set is built once and
kept, in a database named for its scale and the generator's version; the parts
that write work on a copy of it. One run prints, for a real `proca-stats serve`:

1. cold start to SERVING (the first full calculation) and its peak memory;
2. the full calculation against Proca 3.4's queries, after checking that both
   give the same figures for every campaign (bench/calculations.py);
3. the refresh after a change set (bench/change_set.py) with the ``updated-at``
   detection and with the logical change feed, each compared with a full
   calculation, and the feed's lag;
4. a warm restart (SIGTERM, the same flags again) to SERVING, its first answers
   compared with those before, then the time until it is up to date.

Parts 3 (the feed) and 4 need a `proca-stats serve` with ``--change-feed`` and
``--state-dir``; with an older one they say so and are skipped.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

import change_set
import psycopg
from calculations import full_calculation, ours, runs_text
from dataset import (
    create_database,
    describe,
    drop_database,
    index_differences,
    scaled_data_set,
    scaled_name,
)
from own_postgres import machine_binaries, own_postgres
from server_log import ServerLog, Sync
from serving import free_port, memory_mib, serve_options, serve_process

from proca_stats.client import StatsClient
from proca_stats.server.state.counters import CampaignCounters

Figures = dict[int, CampaignCounters]
FEED_SLOT = "proca_stats_bench"


def say(text: str = "") -> None:
    print(text, flush=True)


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# --- the machine and the data set ------------------------------------------------------------


def machine(admin_url: str) -> None:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    memory = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    say(f"Machine: {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM; {load()}")
    with psycopg.connect(admin_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        names = ("shared_buffers", "work_mem", "max_parallel_workers_per_gather", "wal_level")
        settings = {name: conn.execute(f"SHOW {name}").fetchone() for name in names}
    shown = ", ".join(f"{name} = {value[0]}" for name, value in settings.items() if value)
    say(f"PostgreSQL {version[0] if version else '?'}: {shown}")


def data_set_size(url: str) -> None:
    with psycopg.connect(url) as conn:
        total = conn.execute("SELECT pg_size_pretty(pg_database_size(current_database()))")
        say(f"  size on disk: {total.fetchone()[0]}")  # type: ignore[index]
        for table, heap, indexes in conn.execute(
            "SELECT relname, pg_size_pretty(pg_table_size(oid)),"
            " pg_size_pretty(pg_indexes_size(oid)) FROM pg_class"
            " WHERE relname IN ('actions', 'supporters') ORDER BY relname"
        ):
            say(f"    {table}: {heap} of rows, {indexes} of indexes")
    extra = index_differences(url)
    say("  indexes: exactly Proca's" if not extra else f"  indexes NOT Proca's: {', '.join(extra)}")


# --- what a server answers -------------------------------------------------------------------


def answers(port: int, campaign_ids: list[int]) -> Figures:
    """Every campaign's figures as the server answers them (BatchGetStats, 1,000 at a time)."""
    figures: Figures = {}
    with StatsClient(f"127.0.0.1:{port}", timeout=30) as client:
        for start in range(0, len(campaign_ids), 1000):
            for stats in client.batch_get_stats(campaign_ids[start : start + 1000]):
                figures[stats.campaign_id] = CampaignCounters(
                    stats.supporters,
                    dict(stats.actions_by_type),
                    dict(stats.supporters_by_area),
                    dict(stats.supporters_by_org),
                )
    return figures


def differing(a: Figures, b: Figures) -> list[int]:
    """Campaigns whose figures differ (a count of 0 and no count are the same figure)."""

    def plain(c: CampaignCounters | None) -> tuple[object, ...]:
        c = c or CampaignCounters()
        maps = (c.actions_by_type, c.supporters_by_area, c.supporters_by_org)
        return (c.supporters, *({k: v for k, v in m.items() if v} for m in maps))

    return sorted(cid for cid in a.keys() | b.keys() if plain(a.get(cid)) != plain(b.get(cid)))


def campaign_ids(url: str) -> list[int]:
    with psycopg.connect(url) as conn:
        return [c for (c,) in conn.execute("SELECT id FROM campaigns ORDER BY id")]


def metric(port: int, name: str) -> str | None:
    """A metric's sample line(s) from the server's /metrics, or None."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    found = [line for line in text.splitlines() if line.startswith(name)]
    return "; ".join(found) or None


# --- 1. cold start ---------------------------------------------------------------------------


def cold_start(url: str, options: list[str], log: ServerLog) -> None:
    say("\n1. Cold start of `proca-stats serve` to SERVING (its first full calculation)")
    started = time.monotonic()
    with serve_process(url, "--sync-interval", "0", *options, log=log.path) as (process, _):
        serving = time.monotonic() - started
        peak, rss = memory_mib(process.pid)
    first = log.syncs()[0]
    say(
        f"  SERVING {serving:.1f} s after the start; its full calculation {first.seconds:.1f} s"
        f" ({first.rows_read:,} rows read); peak RSS {peak:.0f} MiB, RSS then {rss:.0f} MiB"
    )


# --- 3. refreshes ----------------------------------------------------------------------------


@contextmanager
def changed_copy(admin_url: str, name: str) -> Iterator[str]:
    """A copy of the data set for the parts that write, dropped afterwards (with its slot)."""
    started = time.monotonic()
    url = create_database(admin_url, name + "_changed", template=name)
    say(f"  (the changes go to a copy of the data set, made in {time.monotonic() - started:.0f} s)")
    try:
        yield url
    finally:
        drop_database(admin_url, name + "_changed")


class Rounds:
    """Change sets applied one after another to a server's database, each stamped an hour
    after the one before (on the data set's clock) and timed by the sync that took it in."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        with psycopg.connect(url) as conn:
            self._stamp = change_set.newest_stamp(conn)
        self._round = 0
        self.deleted_in: set[int] = set()

    def apply(self) -> datetime:
        self._round += 1
        stamp = self._stamp + timedelta(hours=self._round)
        applied = change_set.apply(self.url, random.Random(self._round), stamp)
        self.deleted_in |= applied.deleted_in
        return applied.committed_at

    def run(self, log: ServerLog, rounds: int) -> list[Sync]:
        """The syncs that took each change set in; after each, one more sync is waited for,
        which has no change to take in (``quiet_syncs``)."""
        taken = []
        for _ in range(rounds):
            committed_at = self.apply()
            taken.append(log.first_sync_after(committed_at, within=self.interval + 600))
            log.first_sync_after(taken[-1].snapshot, within=self.interval + 600)
        return taken


def report_refreshes(name: str, syncs: list[Sync], full_seconds: float, goal: str) -> None:
    seconds = statistics.median(s.seconds for s in syncs)
    say(
        f"  {name}: {seconds:.3f} s = {seconds / full_seconds:.1%} of a full calculation{goal}"
        f" (runs {runs_text([s.seconds for s in syncs])}; last: {syncs[-1].describe()})"
    )


def quiet_syncs(log: ServerLog, taken: list[Sync]) -> str:
    """The syncs after the first full calculation that took no change set in."""
    quiet = [s for s in log.syncs()[1:] if s not in taken]
    if not quiet:
        return "no sync without a change set"
    return (
        f"a sync with nothing new: median {statistics.median(s.seconds for s in quiet):.3f} s"
        f" ({len(quiet)} syncs; last: {quiet[-1].describe()})"
    )


def compared(port: int, url: str, ids: list[int]) -> list[int]:
    """Campaigns whose served figures differ from a full calculation now."""
    return differing(answers(port, ids), ours(url))


def updated_at_refresh(
    url: str, options: list[str], interval_ms: int, rounds: int, full_seconds: float, logs: Path
) -> None:
    log = ServerLog(logs / "updated-at.log")
    flags = ["--sync-interval", str(interval_ms), *options]
    ids = campaign_ids(url)
    changes = Rounds(url, interval_ms / 1000)
    with serve_process(url, *flags, log=log.path) as (_, port):
        taken = changes.run(log, rounds)
        report_refreshes("updated-at (fallback)", taken, full_seconds, "")
        say(f"    {quiet_syncs(log, taken)}")
        differ = compared(port, url, ids)
    why = (
        "each one where actions were deleted: deletes wait for the next full calculation"
        if set(differ) <= changes.deleted_in
        else "not only where actions were deleted: a bug"
    )
    say(
        f"    figures equal to a full calculation: {not differ}"
        + (f" ({len(differ)} campaigns differ, {why})" if differ else "")
    )


def feed_refresh_and_restart(
    url: str, flags: list[str], interval_ms: int, rounds: int, full_seconds: float, logs: Path
) -> None:
    log = ServerLog(logs / "feed.log")
    metrics_port = free_port()
    flags = [*flags, "--metrics-listen", f"127.0.0.1:{metrics_port}"]
    ids = campaign_ids(url)
    changes = Rounds(url, interval_ms / 1000)
    with serve_process(url, *flags, log=log.path) as (process, port):
        say(f"  feed in use: {metric(metrics_port, 'proca_stats_change_feed')}")
        taken = changes.run(log, rounds)
        report_refreshes("logical feed", taken, full_seconds, " (goal <= 2 %)")
        say(
            f"    feed lag after the refresh: {metric(metrics_port, 'proca_stats_feed_lag_bytes')}"
            f"; the slot as PostgreSQL sees it: {slot_lag(url)}"
        )
        say(f"    {quiet_syncs(log, taken)}")
        differ = compared(port, url, ids)
        say(
            f"    figures equal to a full calculation: {not differ}"
            + (f" ({len(differ)} campaigns differ: a bug)" if differ else "")
        )
        before = answers(port, ids)
        peak, _ = memory_mib(process.pid)
    say(f"    peak RSS of the server: {peak:.0f} MiB")
    say("\n4. Warm restart: SIGTERM, a change set while stopped, the same flags again")
    changes.apply()
    expected = ours(url)
    started = time.monotonic()
    with serve_process(url, *flags, log=log.path) as (_, port):
        serving = time.monotonic() - started
        first = answers(port, ids)
        synced = time.monotonic()
        while differing(answers(port, ids), expected):
            if time.monotonic() > synced + interval_ms / 1000 + 600:
                raise SystemExit("bench: the restarted server never caught up with the database")
            time.sleep(0.1)
        caught_up = time.monotonic() - started
    same = not differing(first, before)
    say(
        f"  SERVING {serving:.2f} s after the start (goal <= 2 s); first answers equal to those"
        f" before the restart: {same}"
    )
    say(f"  up to date {caught_up:.1f} s after the start (sync interval {interval_ms / 1000:g} s)")


def slot_lag(url: str) -> str:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT slot_name, pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots"
            " WHERE database = current_database()"
        ).fetchall()
    return ", ".join(f"{slot} {lag:,} bytes behind" for slot, lag in rows) or "no slot"


# --- the run ---------------------------------------------------------------------------------


def run(
    admin_url: str, args: argparse.Namespace, cpu_seconds: Callable[[], float] | None = None
) -> None:
    """Every part, on the PostgreSQL of ``admin_url`` (whose CPU time ``cpu_seconds`` reads)."""
    machine(admin_url)
    url = scaled_data_set(admin_url, args.scale)
    name = scaled_name(args.scale)
    describe(url)
    data_set_size(url)
    logs = Path(tempfile.mkdtemp(prefix="proca-stats-scale-"))
    say(f"  server logs in {logs}")
    help_text = serve_options()
    feed, state = "--change-feed" in help_text, "--state-dir" in help_text
    # A server without the feed and without state: what every server did before them.
    plain = ["--change-feed", "updated-at"] if feed else []
    plain += ["--no-state"] if "--no-state" in help_text else []
    cold_start(url, plain, ServerLog(logs / "cold.log"))
    say(f"\n2. Full calculation (alternating, median of {args.rounds} rounds; {load()})")
    full = full_calculation(url, args.rounds, cpu_seconds).ours
    say(f"\n3. Refresh after the change set ({args.refresh_rounds} rounds; {load()})")
    with changed_copy(admin_url, name) as copy:
        updated_at_refresh(copy, plain, args.sync_interval, args.refresh_rounds, full, logs)
        if not (feed and state):
            say("  logical feed, feed lag: waiting for a proca-stats serve with --change-feed")
            say("\n4. Warm restart: waiting for a proca-stats serve with --state-dir")
        else:
            state_dir = tempfile.mkdtemp(prefix="state-", dir=logs)
            flags = [
                "--sync-interval",
                str(args.sync_interval),
                "--change-feed",
                "logical",
                "--feed-slot",
                FEED_SLOT,
                "--state-dir",
                state_dir,
            ]
            feed_refresh_and_restart(
                copy, flags, args.sync_interval, args.refresh_rounds, full, logs
            )
    say(f"\n{load()} at the end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=10, help="times bench/run.py's data set")
    parser.add_argument(
        "--database-url",
        help="an administrative URL of a PostgreSQL to keep the data sets in (default: one of"
        " the benchmark's own, see --own-postgres)",
    )
    parser.add_argument(
        "--own-postgres",
        type=Path,
        default=Path("/var/tmp/proca-stats-bench"),
        metavar="DIR",
        help="data directory of the benchmark's own PostgreSQL, kept between runs",
    )
    parser.add_argument("--postgres-bin", type=Path, default=machine_binaries(), metavar="DIR")
    parser.add_argument("--port", type=int, default=55433, help="port of its own PostgreSQL")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the full calculation")
    parser.add_argument("--refresh-rounds", type=int, default=3)
    parser.add_argument("--sync-interval", type=int, default=5000, metavar="MS")
    args = parser.parse_args()
    say(f"proca-stats at {args.scale:g} times the benchmark's data set")
    if args.database_url:
        run(args.database_url, args)
        return
    if args.postgres_bin is None:
        raise SystemExit("bench: no PostgreSQL binaries found: give --postgres-bin DIR")
    with own_postgres(args.own_postgres, args.postgres_bin, args.port) as server:
        run(server.url(), args, server.cpu_seconds)


if __name__ == "__main__":
    main()
