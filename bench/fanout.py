"""What --fanout costs an Increment, and how soon the other replicas see it.

    python bench/fanout.py [--samples 200] [--seconds 5] [--rounds 3] [--clients 2]

On DATABASE_URL (Proca's tables are created where missing), else on an embedded
PostgreSQL in a temporary directory, it runs `proca-stats serve` processes and
prints, from the same run:

1. Increment throughput of one server without --fanout and of one with it,
   measured in alternating rounds: client processes call Increment as fast as
   they can (no action id, so every call is counted and published);
2. fan-out latency, p50 and p99: from an Increment sent to replica A until
   replica B shows it, seen through a WatchStats stream on B (no polling),
   first with the replicas otherwise idle, then with A under the same
   Increment load as in 1.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType

from serving import bench_database, calls_per_second, serve_process

from proca_stats.client import StatsClient

CAMPAIGNS = 100
WATCHED = CAMPAIGNS + 1  # the latency probe's campaign: the load never touches it
WATCH_INTERVAL = 0.1  # seconds: WatchStats' minimum; samples are spaced wider


def increment_for(target: str, seconds: float, results: Connection) -> None:
    """One client process: Increments in a loop, over the campaigns, for ``seconds``."""
    calls = 0
    with StatsClient(target) as client:
        client.increment(1, 1, "signature")  # connected before the clock starts
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.increment(calls % CAMPAIGNS + 1, 1, "signature", new_supporter=calls % 2 == 0)
            calls += 1
    results.send(calls)


def increments_per_second(target: str, clients: int, seconds: float) -> float:
    return calls_per_second(increment_for, target, clients, seconds)


def increment_until(target: str, done: EventType) -> None:
    """One client process of a background load: Increments in a loop until ``done``."""
    with StatsClient(target) as client:
        calls = 0
        while not done.is_set():
            client.increment(calls % CAMPAIGNS + 1, 1, "signature", new_supporter=calls % 2 == 0)
            calls += 1


@contextmanager
def loaded(target: str, clients: int) -> Iterator[None]:
    """``target`` under Increment load from ``clients`` processes for the block."""
    spawn = multiprocessing.get_context("spawn")
    done = spawn.Event()
    processes = [spawn.Process(target=increment_until, args=(target, done)) for _ in range(clients)]
    for process in processes:
        process.start()
    try:
        yield
    finally:
        done.set()
        for process in processes:
            process.join()


def latencies(source: str, watched: str, samples: int) -> list[float]:
    """Seconds from an Increment on ``source`` until a WatchStats stream on ``watched`` shows it."""
    seconds: list[float] = []
    with (
        StatsClient(source) as sender,
        StatsClient(watched) as watcher,
        watcher.watch_stats(WATCHED, min_interval_ms=round(WATCH_INTERVAL * 1000)) as stream,
    ):
        start = next(stream).supporters
        for n in range(1, samples + 1):
            time.sleep(WATCH_INTERVAL * 1.2)  # the stream may send again
            sent = time.perf_counter()
            sender.increment(WATCHED, 1, "signature", new_supporter=True)
            while next(stream).supporters < start + n:
                pass
            seconds.append(time.perf_counter() - sent)
    return seconds


def percentiles(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    cuts = statistics.quantiles(ms, n=100, method="inclusive")
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms, max {max(ms):.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="latency samples per phase")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a throughput round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds of each kind")
    parser.add_argument("--clients", type=int, default=2, help="Increment client processes")
    args = parser.parse_args()
    options = ("--sync-interval", "0")

    with bench_database() as url, ExitStack() as servers:
        plain = servers.enter_context(serve_process(url, *options, ready_within=60))[1]
        replica_a = servers.enter_context(
            serve_process(url, *options, "--fanout", ready_within=60)
        )[1]
        targets = {"without": f"127.0.0.1:{plain}", "with": f"127.0.0.1:{replica_a}"}
        rates: dict[str, list[float]] = {"without": [], "with": []}
        for target in targets.values():
            increments_per_second(target, args.clients, 1.0)  # warm-up
        for _ in range(args.rounds):
            for kind, target in targets.items():
                rates[kind].append(increments_per_second(target, args.clients, args.seconds))

        replica_b = servers.enter_context(
            serve_process(url, *options, "--fanout", ready_within=60)
        )[1]
        source, watched = targets["with"], f"127.0.0.1:{replica_b}"
        idle = latencies(source, watched, args.samples)
        with loaded(source, args.clients):
            busy = latencies(source, watched, args.samples)

    without, with_fanout = statistics.median(rates["without"]), statistics.median(rates["with"])
    print(
        f"{os.cpu_count()} cores, {args.clients} Increment client processes, "
        f"{args.rounds} alternating rounds of {args.seconds:g} s, {args.samples} latency samples"
    )
    print()
    print("| Figure | Value |")
    print("|---|---|")
    print(f"| Increments/s, one server without --fanout | {without:.0f} |")
    print(f"| Increments/s, one server with --fanout | {with_fanout:.0f} |")
    print(f"| cost of --fanout | {100 * (1 - with_fanout / without):.1f} % |")
    print(f"| fan-out latency, replicas idle | {percentiles(idle)} |")
    print(f"| fan-out latency, A under Increment load | {percentiles(busy)} |")
    for kind, values in rates.items():
        print(f"rounds {kind} --fanout: " + ", ".join(f"{v:.0f}" for v in values))


if __name__ == "__main__":
    main()
