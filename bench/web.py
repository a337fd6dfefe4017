"""What the HTTP port serves, and what it costs the gRPC port (not part of the test suite).

    python bench/web.py [--seconds 5] [--rounds 7] [--pin]   # DATABASE_URL=… else embedded

With h2load (Debian: nghttp2-client) on one `proca-stats serve --http-listen` process:

- throughput, each round running every case once, in an order rotated round by round:
  GetStats over Connect as a JSON GET and as a binary POST (h2c), over gRPC on the same
  process, over gRPC on a process without --http-listen, and on a bare threaded grpcio
  server answering the same bytes;
- what 1,000 HTTP watchers (100 campaigns, ten each, in a client process at the lowest
  priority) cost gRPC GetStats when each gets one message a second. The watchers stay
  connected; 100 Increments/s go, phase by phase, to their campaigns (1,000 messages/s)
  or to 100 campaigns nobody watches (none): the two phases differ only by the messages.
  The phases alternate, their order swapped every other round; a round's cost is its
  own loss, and the median and spread of the rounds are reported;
- the server's CPU per HTTP message, from the same two phases without h2load: the
  process's CPU time (which a busy machine does not inflate the way it slows a
  throughput) in the phase with messages less the phase without, per message.

Each phase prints the machine's load average (1 minute), as the figures move with it,
and the CPU the watchers' client used. On a machine of few cores that client, h2load
and the server share the CPUs, so the cost measured includes what reading 1,000
messages a second costs the client, which browsers elsewhere pay in production;
``--pin`` puts the servers on the first CPU and everything else on the others, so
that the cost is the server's own.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.run import bare_server, grpc_body, h2load
from bench.serving import bench_database, free_port, serve_process
from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from tests.support.web import async_stream

CAMPAIGNS, PER_CAMPAIGN = 100, 10
WATCHED, UNWATCHED = 1, CAMPAIGNS + 1  # the first campaign id of each set
GET_STATS = "/proca.stats.v1.StatsService/GetStats"
IN_FLIGHT = 4 * 8  # h2load's connections x streams
GRPC_REQUEST = grpc_body(stats_pb2.GetStatsRequest(campaign_id=1).SerializeToString())


def pin(pid: int, cpus: list[int]) -> None:
    """Every thread of a process on ``cpus`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect_load(port: int, seconds: int, binary: bool) -> float:
    """GetStats/s under h2load on the HTTP port: a Connect GET (JSON) or POST (binary), h2c."""
    request = stats_pb2.GetStatsRequest(campaign_id=1)
    with tempfile.TemporaryDirectory() as tmp:
        body = Path(tmp) / "body"
        body.write_bytes(request.SerializeToString())
        url = f"http://127.0.0.1:{port}{GET_STATS}"
        options = ["-d", str(body), "-H", "content-type: application/proto"] if binary else []
        if not binary:
            url += "?encoding=json&message=%7B%22campaignId%22%3A1%7D&connect=v1"
        done = subprocess.run(
            [
                *("h2load", "-D", str(seconds), "--warm-up-time", "1"),
                *("-c", "4", "-m", "8", "-t", "1", *options, url),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    rate = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", done.stdout)
    failed = re.search(r"(\d+) failed", done.stdout)
    # At most the requests in flight when the clock stops (4 x 8) may be cut off.
    if not rate or not failed or int(failed[1]) > IN_FLIGHT:
        sys.exit("bench: h2load failed:\n" + done.stdout)
    return float(rate[1])


def grpc_load(port: int, seconds: int) -> float:
    return h2load(port, GET_STATS, GRPC_REQUEST, seconds, 4, 8)[0]


def watchers(
    port: int, ready: threading.Event, stop: threading.Event, received: Synchronized[int]
) -> None:
    """1,000 HTTP streams on one event loop, at the lowest priority, counting messages."""
    os.nice(19)

    async def hold() -> None:
        async def one(campaign: int) -> None:
            async for _ in async_stream(port, {"campaign_id": campaign}):
                with received.get_lock():
                    received.value += 1

        tasks = [
            asyncio.create_task(one(WATCHED + c))
            for c in range(CAMPAIGNS)
            for _ in range(PER_CAMPAIGN)
        ]
        while received.value < CAMPAIGNS * PER_CAMPAIGN:  # every stream's first message
            await asyncio.sleep(0.1)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()

    asyncio.run(hold())


@contextmanager
def increments(grpc_port: int) -> Iterator[list[int]]:
    """One Increment a second to each of 100 campaigns, from the first id in the list
    yielded (which the caller changes to switch sets)."""
    first = [UNWATCHED]
    stop = threading.Event()

    def feed() -> None:
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = stats_pb2_grpc.StatsServiceStub(channel)
            while not stop.is_set():
                started, base = time.monotonic(), first[0]
                for campaign in range(base, base + CAMPAIGNS):
                    stub.Increment(
                        stats_pb2.IncrementRequest(campaign_id=campaign, org_id=1, action_type="s")
                    )
                stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        yield first
    finally:
        stop.set()
        feeder.join()


def phase(
    name: str,
    first: list[int],
    pids: tuple[int, int],
    received: Synchronized[int],
    measure: Callable[[], float],
) -> tuple[float, float, float]:
    """One phase: the Increments' target set, a settling pause, then ``measure``; its result,
    the server's CPU (cores) and the messages a second the watchers got. The CPU of the
    watchers' client (the second pid) is printed: on a machine it shares, it is taken from
    what the server and h2load could have had."""
    first[0] = WATCHED if name == "watched" else UNWATCHED
    time.sleep(2)  # the last round of Increments to the other set has gone out
    server_pid, client_pid = pids
    cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(client_pid)
    count, started = received.value, time.monotonic()
    result = measure()
    elapsed = time.monotonic() - started
    cores = (cpu_seconds(server_pid) - cpu) / elapsed
    client = (cpu_seconds(client_pid) - client_cpu) / elapsed
    messages = (received.value - count) / elapsed
    shown = f"{result:6.0f} GetStats/s" if result else " " * 17
    print(
        f"  {name:9} {shown}  server CPU {cores:4.2f} cores  HTTP messages/s {messages:6.0f}"
        f"  client CPU {client:4.2f}  load average {load_average():.1f}",
        flush=True,
    )
    return result, cores, messages


def alternated(
    rounds: int, run: Callable[[str], tuple[float, float, float]]
) -> Iterator[dict[str, tuple[float, float, float]]]:
    """``rounds`` pairs of phases, unwatched and watched, their order swapped every other."""
    for round_ in range(rounds):
        order = ("unwatched", "watched")[:: 1 if round_ % 2 == 0 else -1]
        yield {name: run(name) for name in order}


def spread(values: list[float], unit: str = "", scale: float = 1.0) -> str:
    shown = [round(v * scale, 1 if scale != 1.0 else None) for v in values]
    return f"median {statistics.median(values) * scale:.1f}{unit}, rounds {shown}"


def throughput(http_port: int, port: int, plain: int, seconds: int, rounds: int) -> None:
    answer = stats_pb2.GetStatsResponse(
        stats=stats_pb2.CampaignStats(campaign_id=1)
    ).SerializeToString()
    bare = free_port()
    cases: list[tuple[str, Callable[[], float]]] = [
        ("Connect GET, JSON", lambda: connect_load(http_port, seconds, False)),
        ("Connect POST, binary", lambda: connect_load(http_port, seconds, True)),
        ("gRPC, --http-listen", lambda: grpc_load(port, seconds)),
        ("gRPC, no --http-listen", lambda: grpc_load(plain, seconds)),
        ("bare grpcio", lambda: grpc_load(bare, seconds)),
    ]
    runs: dict[str, list[float]] = {}
    with bare_server(bare, answer):
        for round_ in range(rounds):
            for name, measure in cases[round_ % 5 :] + cases[: round_ % 5]:
                runs.setdefault(name, []).append(measure())
    print("throughput, GetStats/s (h2load 4 connections x 8 streams):")
    for name, rates in runs.items():
        print(f"  {name:24} {spread(rates)}")


def watched(http_port: int, port: int, pid: int, seconds: int, rounds: int) -> None:
    ready, stop = multiprocessing.Event(), multiprocessing.Event()
    received = multiprocessing.Value("l", 0)
    held = multiprocessing.Process(target=watchers, args=(http_port, ready, stop, received))
    held.start()
    assert held.pid is not None
    if not ready.wait(120):
        sys.exit("bench: the 1,000 watchers did not all get their first message")
    with increments(port) as first:
        print("1,000 HTTP watchers, 100 Increments/s, with h2load on gRPC GetStats:")
        costs = [
            1 - pair["watched"][0] / pair["unwatched"][0]
            for pair in alternated(
                rounds,
                lambda name: phase(
                    name, first, (pid, held.pid), received, lambda: grpc_load(port, seconds)
                ),
            )
        ]

        def idle() -> float:
            time.sleep(seconds)
            return 0.0

        print("the same without h2load (the server's CPU per message):")
        per_message = [
            (pair["watched"][1] - pair["unwatched"][1]) / pair["watched"][2]
            for pair in alternated(
                max(3, rounds // 2),
                lambda name: phase(name, first, (pid, held.pid), received, idle),
            )
        ]
    stop.set()
    held.join(30)
    print(f"cost of 1,000 watchers to gRPC GetStats: {spread(costs, ' %', 100)}")
    print(f"server CPU per HTTP message: {spread(per_message, ' us', 1e6)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the servers on the first CPU, everything else (h2load, the watchers' client, "
        "PostgreSQL, the Increments) on the others: what the watchers cost the server itself",
    )
    parser.add_argument("--watchers-only", action="store_true", help="skip the throughput part")
    args = parser.parse_args()
    print(f"nproc {os.cpu_count()}, load average {load_average():.1f} at the start")
    cpus = sorted(os.sched_getaffinity(0))
    if args.pin:
        os.sched_setaffinity(0, cpus[1:])  # inherited by PostgreSQL and every client
    with bench_database() as url:
        http_port = free_port()
        options = ("--sync-interval", "0", "--http-listen", f"127.0.0.1:{http_port}")
        with (
            serve_process(url, *options) as (process, port),
            serve_process(url, "--sync-interval", "0") as (other, plain),
        ):
            if args.pin:
                for pid in (process.pid, other.pid):
                    pin(pid, cpus[:1])
                print(f"servers on CPU {cpus[0]}, the rest on CPUs {cpus[1:]}")
            if not args.watchers_only:
                throughput(http_port, port, plain, args.seconds, args.rounds)
            watched(http_port, port, process.pid, args.seconds, args.rounds)
    print(f"load average {load_average():.1f} at the end")


if __name__ == "__main__":
    main()
