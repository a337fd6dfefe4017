"""What looking late Increments up costs Increment and GetStats: this build against another.

    python bench/late.py [--baseline PATH/TO/proca-stats] [--seconds 5] [--rounds 3]
                         [--clients 2] [--readers 2] [--increment-rate 300]

On DATABASE_URL (Proca's tables are created where missing), else on an embedded
PostgreSQL in a temporary directory, it runs one `proca-stats serve --sync-interval 0`
of this build and, with ``--baseline``, one of another build (say, the one before the
late check), and measures them in alternating rounds, in two phases:

1. Increment: client processes call Increment as fast as they can, each with a
   new action id (not in the database: every call is counted and, after the
   first swap, looked up by the late check, which takes none back);
2. GetStats: reader processes call GetStats as fast as they can while one
   process sends Increments like those of phase 1 at a steady rate (the same
   work for both builds, so that the GetStats figures compare).

Each phase gives calls a second, the per-call latency seen by the clients (p50,
p99) and the server process's CPU time per call (user and system, from /proc:
Linux only), which the machine's other work disturbs less than the rates; each
the median of the rounds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from serving import bench_database, serve_process

from proca_stats.client import StatsClient

CAMPAIGNS = 100
Call = Callable[[StatsClient, int], None]


def increment(client: StatsClient, n: int) -> None:
    action_id = random.getrandbits(62) + 1  # new every time: counted, remembered, looked up
    client.increment(
        n % CAMPAIGNS + 1, 1, "signature", new_supporter=n % 2 == 0, action_id=action_id
    )


def get_stats(client: StatsClient, n: int) -> None:
    client.get_stats(n % CAMPAIGNS + 1)


def timed(target: str, call: Call, seconds: float, results: Connection) -> None:
    """One client process: ``call`` in a loop for ``seconds``; sends each call's seconds."""
    taken: list[float] = []
    with StatsClient(target) as client:
        call(client, 0)  # connected before the clock starts
        end = time.monotonic() + seconds
        while (started := time.monotonic()) < end:
            call(client, len(taken))
            taken.append(time.monotonic() - started)
    results.send(taken)


def background(target: str, per_second: float, done: EventType) -> None:
    """A process of Increments at ``per_second`` until ``done``."""
    with StatsClient(target) as client:
        n = 0
        start = time.monotonic()
        while not done.is_set():
            increment(client, n)
            n += 1
            done.wait(max(0.0, start + n / per_second - time.monotonic()))


def phase(target: str, call: Call, processes: int, seconds: float, rate: float) -> list[float]:
    """Every call's seconds from ``processes`` client processes, beside ``rate`` Increments a
    second (0: none)."""
    spawn = multiprocessing.get_context("spawn")
    done = spawn.Event()
    load = [spawn.Process(target=background, args=(target, rate, done))] if rate else []
    pipes = [spawn.Pipe(duplex=False) for _ in range(processes)]
    clients = [spawn.Process(target=timed, args=(target, call, seconds, w)) for _, w in pipes]
    for process in load + clients:
        process.start()
    taken = [t for receiving, _ in pipes for t in receiving.recv()]
    done.set()
    for process in load + clients:
        process.join()
    return taken


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(taken: list[float], seconds: float, cpu: float) -> tuple[float, ...]:
    """Calls a second, p50 and p99 in milliseconds, server CPU microseconds a call."""
    cuts = statistics.quantiles([t * 1000 for t in taken], n=100, method="inclusive")
    return len(taken) / seconds, cuts[49], cuts[98], cpu * 1e6 / len(taken)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", help="the proca-stats command of the build to compare with")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of a phase")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each build")
    parser.add_argument("--clients", type=int, default=2, help="Increment client processes")
    parser.add_argument("--readers", type=int, default=2, help="GetStats client processes")
    parser.add_argument(
        "--increment-rate", type=float, default=300, help="Increments/s beside GetStats"
    )
    args = parser.parse_args()
    builds = {"this build": str(Path(sys.executable).with_name("proca-stats"))}
    if args.baseline:
        builds["baseline"] = args.baseline
    results: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    with bench_database() as url, ExitStack() as servers:
        targets = {}
        for name, command in builds.items():
            process, port = servers.enter_context(
                serve_process(url, "--sync-interval", "0", executable=command, ready_within=60)
            )
            targets[name] = (f"127.0.0.1:{port}", process.pid)
            phase(targets[name][0], increment, args.clients, 1.0, rate=0)  # warm-up
        for _ in range(args.rounds):
            for name, (target, pid) in targets.items():
                for kind, call, processes, rate in (
                    ("Increment", increment, args.clients, 0),
                    ("GetStats", get_stats, args.readers, args.increment_rate),
                ):
                    cpu = cpu_seconds(pid)
                    taken = phase(target, call, processes, args.seconds, rate)
                    cpu = cpu_seconds(pid) - cpu
                    results.setdefault((name, kind), []).append(figures(taken, args.seconds, cpu))
    print(
        f"{os.cpu_count()} cores, {args.rounds} alternating rounds of {args.seconds:g} s, "
        f"{args.clients} Increment client processes, {args.readers} GetStats readers "
        f"beside {args.increment_rate:g} Increments/s (server CPU per GetStats includes them)"
    )
    print()
    print("| Build | RPC | calls/s | p50 ms | p99 ms | server CPU µs/call | rounds (calls/s) |")
    print("|---|---|---|---|---|---|---|")
    for (name, kind), rounds in results.items():
        rate, p50, p99, cpu = (statistics.median(r[i] for r in rounds) for i in range(4))
        spread = ", ".join(f"{r[0]:.0f}" for r in rounds)
        print(f"| {name} | {kind} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {cpu:.0f} | {spread} |")


if __name__ == "__main__":
    main()
