"""What open WatchStats streams cost GetStats: its throughput with 0 and with N watchers.

    python bench/watchers.py [--watchers 1000] [--seconds 5] [--rounds 3] [--readers 2]

It runs a `proca-stats serve` process (on DATABASE_URL, a scratch database,
or on an embedded PostgreSQL in a temporary directory), then alternates two phases, the same
but for the watchers: reader processes call GetStats as fast as they can,
while a steady stream of Increments changes the watched campaigns. In the
watched phase another process holds N WatchStats streams (asyncio, spread
over the campaigns and over several connections) at the default interval, so
every watcher gets about one message a second. Each process runs on its own
interpreter: what is measured is the server, not a client's lock.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection

import grpc
from serving import bench_database, calls_per_second, serve_process

from proca_stats.client import StatsClient
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc

CAMPAIGNS = 100
STREAMS_PER_CONNECTION = 100


@contextmanager
def server(max_watchers: int) -> Iterator[str]:
    """A `proca-stats serve` process on a free port; yields its target once it is SERVING."""
    with (
        bench_database() as url,
        serve_process(
            url, "--sync-interval", "0", "--max-watchers", str(max_watchers), ready_within=60
        ) as (_, port),
    ):
        yield f"127.0.0.1:{port}"


def read_for(target: str, seconds: float, results: Connection) -> None:
    """One reader process: GetStats in a loop, over the campaigns, for ``seconds``."""
    calls = 0
    with StatsClient(target) as client:
        client.get_stats(1)  # connected before the clock starts
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.get_stats(calls % CAMPAIGNS + 1)
            calls += 1
    results.send(calls)


def get_stats_per_second(target: str, readers: int, seconds: float) -> float:
    return calls_per_second(read_for, target, readers, seconds)


async def _watch(target: str, count: int, ready: Connection, stop: Connection) -> None:
    channels = [
        grpc.aio.insecure_channel(target) for _ in range(-(-count // STREAMS_PER_CONNECTION))
    ]
    all_open = asyncio.Event()
    first_messages = 0
    messages = 0

    async def one(n: int) -> None:
        nonlocal first_messages, messages
        stub = stats_pb2_grpc.StatsServiceStub(channels[n // STREAMS_PER_CONNECTION])
        request = stats_pb2.WatchStatsRequest(campaign_id=n % CAMPAIGNS + 1)
        first = True
        async for _ in stub.WatchStats(request):
            if first:
                first = False
                first_messages += 1
                if first_messages == count:
                    all_open.set()
            else:
                messages += 1

    tasks = [asyncio.create_task(one(n)) for n in range(count)]
    await all_open.wait()
    ready.send("ready")
    await asyncio.get_running_loop().run_in_executor(None, stop.recv)
    ready.send(messages)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()


def watch(target: str, count: int, ready: Connection, stop: Connection) -> None:
    """The watchers' process: ``count`` streams until told to stop."""
    os.nice(19)  # on a small machine: measure what the server pays, not what reading costs
    asyncio.run(_watch(target, count, ready, stop))


@contextmanager
def increments(target: str, per_second: float) -> Iterator[None]:
    """A steady stream of Increments over the watched campaigns, so that watchers work."""
    done = threading.Event()

    def run() -> None:
        with StatsClient(target) as client:
            n = 0
            while not done.wait(1 / per_second):
                client.increment(n % CAMPAIGNS + 1, 1, "signature", new_supporter=True)
                n += 1

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@contextmanager
def watchers(target: str, count: int) -> Iterator[Connection]:
    spawn = multiprocessing.get_context("spawn")
    ready_in, ready_out = spawn.Pipe(duplex=False)
    stop_in, stop_out = spawn.Pipe(duplex=False)
    process = spawn.Process(target=watch, args=(target, count, ready_out, stop_in))
    process.start()
    if not ready_in.poll(120):
        process.kill()
        sys.exit("the watchers did not all get their first message")
    ready_in.recv()
    try:
        yield ready_in
    finally:
        stop_out.send("stop")
        process.join(timeout=60)


@dataclass(frozen=True)
class Result:
    increments: float
    plain: list[float]
    watched: list[float]
    messages_per_second: float

    def row(self) -> str:
        """Medians; the cost is the median of each round's own cost, so that a load that
        comes and goes on the machine weighs on both sides of a round alike."""
        without, with_watchers = statistics.median(self.plain), statistics.median(self.watched)
        pairs = zip(self.plain, self.watched, strict=True)
        cost = 100 * statistics.median(1 - watched / plain for plain, watched in pairs)
        return (
            f"| {self.increments:g} | {self.messages_per_second:.0f} | {without:.0f} "
            f"| {with_watchers:.0f} | {cost:.1f} % |"
        )


def measure(target: str, rate: float, args: argparse.Namespace) -> Result:
    """Alternated phases without and with watchers, under ``rate`` Increments a second."""
    plain: list[float] = []
    watched: list[float] = []
    messages = 0
    with increments(target, rate):
        get_stats_per_second(target, args.readers, 1.0)  # warm-up
        for _ in range(args.rounds):
            plain.append(get_stats_per_second(target, args.readers, args.seconds))
            with watchers(target, args.watchers) as report:
                watched.append(get_stats_per_second(target, args.readers, args.seconds))
            messages += report.recv()
    return Result(rate, plain, watched, messages / (args.rounds * args.seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=7, help="phases of each kind, alternated")
    parser.add_argument("--readers", type=int, default=2, help="GetStats processes")
    parser.add_argument(
        "--increments",
        type=float,
        nargs="+",
        default=[1, 10, 100],
        metavar="PER_SECOND",
        help="Increments a second over the 100 campaigns, one measurement each "
        "(100: every watcher gets a message every second)",
    )
    args = parser.parse_args()

    with server(args.watchers) as target:
        with StatsClient(target) as client:
            for campaign in range(1, CAMPAIGNS + 1):
                client.increment(campaign, 1, "signature", new_supporter=True)
        results = [measure(target, rate, args) for rate in args.increments]
    print(
        f"{os.cpu_count()} cores, {args.readers} GetStats processes, {args.watchers} watchers, "
        f"medians of {args.rounds} rounds of two {args.seconds:g} s phases (without, with)"
    )
    print()
    print(
        "| Increments/s | WatchStats messages/s | GetStats/s, no watchers "
        f"| GetStats/s, {args.watchers} watchers | cost |"
    )
    print("|---:|---:|---:|---:|---:|")
    for result in results:
        print(result.row())
    for result in results:
        pairs = zip(result.plain, result.watched, strict=True)
        rounds = ", ".join(f"{a:.0f}/{b:.0f}" for a, b in pairs)
        print(f"rounds at {result.increments:g} Increments/s (without/with): {rounds}")


if __name__ == "__main__":
    main()
