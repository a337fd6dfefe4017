"""The proca-stats benchmark: one command, every figure bench/README.md quotes.

    python bench/run.py --database-url postgresql://postgres@127.0.0.1:5432/postgres

It creates (or, with --reuse, reuses) a database of its own, ``proca_stats_bench``
by default, fills it with a Proca-shaped data set built inside PostgreSQL
(bench/dataset.sql), and prints:

1. the full calculation against Proca 3.4's queries (bench/proca34.sql) and
   against a bare scan of the join (bench/floor.sql), timed alternately in the
   same run, with the ratios, after checking that the figures are identical;
2. an incremental refresh after N changed actions, against a full calculation,
   checking each result against a fresh full calculation;
3. GetStats and Increment throughput and p50/p99 latency under h2load, with and
   without a calculation running, against a bare grpcio server that answers the
   same bytes doing nothing else;
4. the server's peak memory with 100,000 campaigns loaded.

It needs h2load (Debian: ``apt-get install nghttp2-client``) for part 3, and
the ``proca-stats`` package installed (``pip install .``).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
from calculations import full_calculation, ours, runs_text, timed
from dataset import build, create_database, describe, drop_database
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool
from serving import free_port, memory_mib, serve_process

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.database import create_recommended_indexes
from proca_stats.server.settings import ServeConfig
from proca_stats.server.state.counters import CampaignCounters
from proca_stats.server.sync.changes import UpdatedAt
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, Snapshots

GET_STATS = "/proca.stats.v1.StatsService/GetStats"
INCREMENT = "/proca.stats.v1.StatsService/Increment"


def say(text: str = "") -> None:
    print(text, flush=True)


# --- 2. incremental refresh --------------------------------------------------------------


def change_actions(url: str, n: int, rng: random.Random) -> None:
    """Proca-style changes to n actions: half new actions, half status changes.

    They are stamped an hour after the newest change, as if that much time had
    passed since the last refresh (so earlier rounds fall out of the overlap).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        top, newest = conn.execute("SELECT max(id), max(updated_at) FROM actions").fetchone()  # type: ignore[misc]
        inserts = n // 2
        updates = n - inserts
        ids = rng.sample(range(1, top + 1), min(updates, top))
        conn.execute(
            """UPDATE actions
               SET processing_status = CASE processing_status WHEN 3 THEN 2 ELSE 3 END,
                   updated_at = %s + interval '1 hour'
               WHERE id = ANY(%s)""",
            (newest, ids),
        )
        conn.execute(
            """INSERT INTO actions (supporter_id, action_type, campaign_id, action_page_id,
                                    processing_status, testing, inserted_at, updated_at)
               SELECT s.id, 'signature', s.campaign_id, s.action_page_id, 3, false,
                      %(at)s::timestamp + interval '1 hour',
                      %(at)s::timestamp + interval '1 hour'
               FROM supporters s WHERE s.id = ANY(%(who)s)""",
            {"at": newest, "who": rng.sample(range(1, top // 2), min(inserts, top // 2 - 1))},
        )


def incremental(
    admin_url: str, name: str, full_seconds: float, sizes: list[int], rounds: int
) -> None:
    """Refreshes after changes to a copy of the data set (so that --reuse finds it unchanged)."""
    say(
        "\n2. Incremental refresh after N changed actions (half new, half status changes),"
        f" median of {rounds} rounds"
    )
    copy = name + "_changed"
    url = create_database(admin_url, copy, template=name)
    try:
        _refreshes(url, full_seconds, sizes, rounds)
    finally:
        drop_database(admin_url, copy)


def _refreshes(url: str, full_seconds: float, sizes: list[int], rounds: int) -> None:
    rng = random.Random(4)
    with ConnectionPool(url, min_size=1, max_size=CONNECTIONS) as pool:
        # The server's defaults: closed and ignored campaigns wait for the slow refresh.
        defaults = ServeConfig()
        refresher = Refresher(
            Snapshots(pool, connect_timeout=10),
            UpdatedAt(overlap=defaults.change_overlap_ms / 1000),
            full_interval=0,
            slow_interval=defaults.slow_sync_interval_ms / 1000,
        )
        try:
            refresher.run()
            refresher.settle()
            for n in sizes:
                times: list[float] = []
                for _ in range(rounds):
                    # One change, refreshed and not timed: it moves the newest updated_at an
                    # hour on, past the changes of the round before (or of an earlier run on a
                    # reused data set), which would otherwise fall in the overlap again.
                    change_actions(url, 1, rng)
                    refresher.run()
                    refresher.settle()
                    change_actions(url, n, rng)
                    started = time.perf_counter()
                    snapshot, report = refresher.run()
                    times.append(time.perf_counter() - started)
                    refresher.settle()
                    # Closed and ignored campaigns wait for the slow refresh: compare live ones.
                    if _live(url, snapshot.campaigns) != _live(url, ours(url)):
                        sys.exit("bench: the incremental refresh differs from a full calculation")
                seconds = statistics.median(times)
                say(
                    f"  N = {n:>7,}: {seconds:7.3f} s = {seconds / full_seconds:6.1%} of a full"
                    f" calculation (runs {runs_text(times)}; {report.kind}: {report.keys:,} keys,"
                    f" {report.recounted} campaigns recounted; each equal to a full calculation)"
                )
        finally:
            refresher.close()


def _live(url: str, figures: dict[int, CampaignCounters]) -> dict[int, CampaignCounters]:
    with psycopg.connect(url) as conn:
        live = {c for (c,) in conn.execute("SELECT id FROM campaigns WHERE status = 0")}
    return {c: counters for c, counters in figures.items() if c in live}


# --- 3. GetStats and Increment under load ------------------------------------------------


def grpc_body(message: bytes) -> bytes:
    """A gRPC length-prefixed message, as h2load sends it."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


@contextmanager
def bare_server(port: int, answer: bytes) -> Iterator[None]:
    """A threaded grpcio server answering GetStats with fixed bytes: the framework's ceiling."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))

    def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
        return answer

    handler = grpc.method_handlers_generic_handler(
        "proca.stats.v1.StatsService",
        {"GetStats": grpc.unary_unary_rpc_method_handler(handle)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield
    finally:
        server.stop(0)


def h2load(
    port: int, path: str, body: bytes, seconds: int, clients: int, streams: int
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 latency (ms) of gRPC calls to ``path``."""
    with tempfile.TemporaryDirectory() as tmp:
        data, log = Path(tmp) / "body", Path(tmp) / "log"
        data.write_bytes(body)
        done = subprocess.run(
            [
                "h2load",
                "-D",
                str(seconds),
                "--warm-up-time",
                "1",
                "-c",
                str(clients),
                "-m",
                str(streams),
                "-t",
                "1",
                "-d",
                str(data),
                "--log-file",
                str(log),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"http://127.0.0.1:{port}{path}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        latencies = sorted(
            int(line.split("\t")[2]) / 1000
            for line in log.read_text().splitlines()
            if line.split("\t")[1] == "200"
        )
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", done.stdout)
    failed = re.search(r"(\d+) failed", done.stdout)
    if not match or not latencies or (failed and int(failed[1])):
        sys.exit("bench: h2load failed:\n" + done.stdout + done.stderr)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return float(match[1]), p50, p99


def load(url: str, seconds: int, clients: int, streams: int, rounds: int) -> None:
    say(
        f"\n3. Load: h2load, {clients} connections x {streams} streams, {seconds} s per run,"
        f" {rounds} alternating rounds (medians)"
    )
    if shutil.which("h2load") is None:
        say("  skipped: h2load not found (Debian: apt-get install nghttp2-client)")
        return
    get = grpc_body(stats_pb2.GetStatsRequest(campaign_id=1).SerializeToString())
    inc = grpc_body(
        stats_pb2.IncrementRequest(
            campaign_id=1, org_id=1, action_type="signature", area="DE", new_supporter=True
        ).SerializeToString()
    )
    runs: dict[str, list[tuple[float, float, float]]] = {}

    def measure(name: str, port: int, path: str, body: bytes) -> None:
        runs.setdefault(name, []).append(h2load(port, path, body, seconds, clients, streams))

    for _ in range(rounds):
        with serve_process(url, "--sync-interval", "0") as (_, port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                answer = channel.unary_unary(GET_STATS, None, None)(get[5:], timeout=5)
            measure("GetStats, no calculation", port, GET_STATS, get)
            measure("Increment, no calculation", port, INCREMENT, inc)
        # Back-to-back full calculations: one always runs.
        busy = ("--sync-interval", "1", "--full-sync-interval", "1")
        with serve_process(url, *busy) as (_, port):
            measure("GetStats, calculation running", port, GET_STATS, get)
            measure("Increment, calculation running", port, INCREMENT, inc)
        port = free_port()
        with bare_server(port, answer):
            measure("GetStats, bare grpcio server", port, GET_STATS, get)
    results = {
        name: tuple(statistics.median(run[i] for run in measured) for i in range(3))
        for name, measured in runs.items()
    }
    for name, (rps, p50, p99) in results.items():
        each = " ".join(f"{run[0]:,.0f}" for run in runs[name])
        say(
            f"  {name:<32} {rps:9,.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms"
            f"   (req/s of each round: {each})"
        )
    quiet, busy_, bare = (
        results[f"GetStats, {k}"]
        for k in ("no calculation", "calculation running", "bare grpcio server")
    )
    say(f"  GetStats p99 during/without a calculation: {busy_[2] / quiet[2]:.2f} (goal <= 2)")
    say(f"  GetStats throughput vs the bare grpcio server: {quiet[0] / bare[0]:.0%} (goal >= 90%)")


# --- 4. memory ---------------------------------------------------------------------------


def memory(admin_url: str, name: str) -> None:
    say("\n4. Peak memory of the server with 100,000 campaigns")
    url = build(
        admin_url,
        name,
        supporters=300_000,
        actions=450_000,
        campaigns=100_000,
        indexes=create_recommended_indexes,
    )
    with serve_process(url, "--sync-interval", "0") as (process, _):
        peak, rss = memory_mib(process.pid)
    say(f"  peak RSS {peak:.0f} MiB, RSS after the first calculation {rss:.0f} MiB")
    drop_database(admin_url, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="an administrative URL: the benchmark creates its own databases there",
    )
    parser.add_argument("--name", default="proca_stats_bench", help="the benchmark database")
    parser.add_argument("--supporters", type=int, default=1_000_000)
    parser.add_argument("--actions", type=int, default=1_500_000)
    parser.add_argument("--campaigns", type=int, default=500)
    parser.add_argument("--reuse", action="store_true", help="keep the data set of an earlier run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-seconds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument(
        "--skip", action="append", default=[], choices=["full", "incremental", "load", "memory"]
    )
    args = parser.parse_args()
    say(f"proca-stats benchmark on {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    if args.reuse:
        url = make_conninfo(args.database_url, dbname=args.name)
    else:
        say(
            f"Building the data set in {args.name} ({args.supporters:,} supporters,"
            f" {args.actions:,} actions, {args.campaigns} campaigns)"
        )
        url = build(
            args.database_url,
            args.name,
            args.supporters,
            args.actions,
            args.campaigns,
            # As `proca-stats db init --recommended-indexes` would (docs/sync.md).
            indexes=create_recommended_indexes,
        )
    describe(url)
    if "full" in args.skip:
        full_seconds = timed(lambda: ours(url))
    else:
        say(f"\n1. Full calculation (alternating, median of {args.rounds} rounds)")
        full_seconds = full_calculation(url, args.rounds).ours
    if "incremental" not in args.skip:
        incremental(args.database_url, args.name, full_seconds, [1, 1_000, 100_000], args.rounds)
    if "load" not in args.skip:
        load(url, args.load_seconds, args.clients, args.streams, args.rounds)
    if "memory" not in args.skip:
        memory(args.database_url, args.name + "_memory")
    say(f"\nload average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
