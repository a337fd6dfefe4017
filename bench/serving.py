"""`proca-stats serve` for the benchmarks: a process of its own on a free port, ready to answer."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


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
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def serve_process(
    database_url: str, *options: str, ready_within: float = 300
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`proca-stats serve` with ``options`` for the block; yields the process and its port."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("proca-stats")),
        "--log-level",
        "WARNING",
        "serve",
        "--listen",
        f"127.0.0.1:{port}",
        "--database-url",
        database_url,
        *options,
    ]
    process = subprocess.Popen(command)
    try:
        deadline = time.monotonic() + ready_within
        while not is_serving(port):
            if process.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"proca-stats serve did not become ready: {' '.join(command)}")
            time.sleep(0.1)
        yield process, port
    finally:
        process.terminate()
        process.wait(timeout=30)
