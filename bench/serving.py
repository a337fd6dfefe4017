"""What the benchmarks share: `proca-stats serve` processes on free ports, ready to answer,
a database to run them on, and client processes that call as fast as they can."""

from __future__ import annotations

import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.server.database import init_schema, start_embedded

# A client process: calls ``target`` for ``seconds``, then sends how many calls it made.
Worker = Callable[[str, float, Connection], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def is_serving(port: int) -> bool:
    """True once the server answers health checks with SERVING (its first calculation is done)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


PROCA_STATS = str(Path(sys.executable).with_name("proca-stats"))


@contextmanager
def serve_process(
    database_url: str,
    *options: str,
    ready_within: float = 300,
    executable: str | None = None,
    log: Path | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`proca-stats serve` with ``options`` for the block; yields the process and its port
    once it is SERVING, and ends it with SIGTERM. With ``log``, its INFO log goes there.

    ``executable``: another build's `proca-stats` command, to compare with (default: this one's).
    """
    port = free_port()
    command = [
        executable or PROCA_STATS,
        "--log-level",
        "WARNING" if log is None else "INFO",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--database-url",
        database_url,
        *options,
    ]
    with open(log or os.devnull, "ab") as stderr:
        process = subprocess.Popen(command, stderr=None if log is None else stderr)
    try:
        deadline = time.monotonic() + ready_within
        while not is_serving(port):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"proca-stats serve did not become ready: {' '.join(command)}")
            time.sleep(0.02)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=60)


def serve_options() -> str:
    """`proca-stats serve --help`: which options this server has."""
    done = subprocess.run([PROCA_STATS, "serve", "--help"], capture_output=True, text=True)
    return done.stdout


def memory_mib(pid: int) -> tuple[float, float]:
    """The process's peak resident memory so far (VmHWM) and its resident memory now, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak, rss = (re.search(rf"{name}:\s+(\d+) kB", status) for name in ("VmHWM", "VmRSS"))
    assert peak is not None
    assert rss is not None
    return int(peak[1]) / 1024, int(rss[1]) / 1024


@contextmanager
def bench_database() -> Iterator[str]:
    """DATABASE_URL with Proca's tables (created where missing), else an embedded PostgreSQL
    in a temporary directory; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="proca-stats-bench-") as tmp:
        url = os.environ.get("DATABASE_URL")
        if url:
            init_schema(url)  # like `proca-stats db init`
        else:
            url = start_embedded(Path(tmp) / "pgdata")
        yield url


def calls_per_second(worker: Worker, target: str, processes: int, seconds: float) -> float:
    """Calls a second made by ``processes`` client processes running ``worker`` at once.

    Each runs on its own interpreter: what is measured is the server, not a client's lock.
    """
    spawn = multiprocessing.get_context("spawn")
    pipes = [spawn.Pipe(duplex=False) for _ in range(processes)]
    started = [
        spawn.Process(target=worker, args=(target, seconds, sending)) for _, sending in pipes
    ]
    for process in started:
        process.start()
    total: int = sum(receiving.recv() for receiving, _ in pipes)
    for process in started:
        process.join()
    return total / seconds
