"""What one streamed message costs the server, under three ways of serving gRPC streams in Python.

    python bench/stream_models.py [--streams 1000] [--seconds 10]

A bare server (no proca-stats code) holds ``--streams`` server-streaming calls
from a client process and sends each stream one small message a second, spread
evenly, as WatchStats does when every watched campaign changes every second.
It prints the server process's CPU time per message for:

- ``thread``: gRPC's threaded server, one thread per stream waiting for its
  next message (what proca-stats does);
- ``callback``: the threaded server's experimental non-blocking streams
  (``experimental_non_blocking``): no thread per stream, a few sender threads;
- ``aio``: gRPC's asyncio server, one task per stream.

The question it answers: does another serving model make a message cheap
enough for 1,000 watchers to cost GetStats much less? (See bench/README.md.)
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from typing import Any, TypeVar

import grpc
from serving import free_port

METHOD = "/bench.Streams/Watch"
T = TypeVar("T")
PAYLOAD = b"x" * 60  # about the size of a WatchStatsResponse


def identity(data: bytes) -> bytes:
    return data


def handler(behavior: Callable[..., Any]) -> grpc.GenericRpcHandler:
    method = grpc.unary_stream_rpc_method_handler(
        behavior, request_deserializer=identity, response_serializer=identity
    )
    return grpc.method_handlers_generic_handler("bench.Streams", {"Watch": method})


class Meter:
    """Counts messages and reports CPU time per message over a measured window."""

    def __init__(self, streams: int, seconds: float) -> None:
        self.streams, self.seconds = streams, seconds
        self.sent = 0

    def report(self, model: str, started: tuple[float, int]) -> None:
        cpu = sum(os.times()[:2]) - started[0]
        messages = self.sent - started[1]
        per_message = 1e6 * cpu / messages
        print(f"  {model:>8}: {messages:,} messages, {per_message:.0f} µs of CPU each", flush=True)

    def start(self) -> tuple[float, int]:
        return sum(os.times()[:2]), self.sent


def deadlines(items: list[T]) -> Iterator[tuple[T, float]]:
    """Each item once a second, evenly spread, forever: the item and when to tick the next."""
    gap = 1.0 / len(items)
    while True:
        second = time.monotonic()
        for n, item in enumerate(items):
            yield item, second + (n + 1) * gap


def paced(items: list[Any], tick: Callable[[Any], None], meter: Meter) -> None:
    """Tick the items on schedule (threaded models)."""
    for item, next_at in deadlines(items):
        tick(item)
        meter.sent += 1
        time.sleep(max(0.0, next_at - time.monotonic()))


def threaded(model: str, port: int, meter: Meter) -> None:
    opened: list[Any] = []

    def watch_thread(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        wake = threading.Lock()
        wake.acquire()
        opened.append(wake)
        yield PAYLOAD
        while context.is_active():
            wake.acquire(timeout=5)
            yield PAYLOAD

    to_send: queue.SimpleQueue[Callable[[bytes], None]] = queue.SimpleQueue()

    def watch_callback(
        request: bytes, context: grpc.ServicerContext, send: Callable[[bytes], None]
    ) -> None:
        opened.append(send)
        to_send.put(send)

    watch_callback.experimental_non_blocking = True  # type: ignore[attr-defined]

    def send_forever() -> None:
        while True:
            to_send.get()(PAYLOAD)

    def release(lock: threading.Lock) -> None:
        if lock.locked():
            lock.release()

    workers = meter.streams + 16 if model == "thread" else 8
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers))
    server.add_generic_rpc_handlers(
        (handler(watch_thread if model == "thread" else watch_callback),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    if model == "callback":
        for _ in range(4):
            threading.Thread(target=send_forever, daemon=True).start()
    while len(opened) < meter.streams:
        time.sleep(0.1)
    tick = release if model == "thread" else to_send.put
    threading.Thread(target=paced, args=(opened, tick, meter), daemon=True).start()
    time.sleep(2)  # let the pace settle before measuring
    started = meter.start()
    time.sleep(meter.seconds)
    meter.report(model, started)


async def asyncio_model(port: int, meter: Meter) -> None:
    events: list[asyncio.Event] = []

    async def watch(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        changed = asyncio.Event()
        events.append(changed)
        yield PAYLOAD
        while True:
            await changed.wait()
            changed.clear()
            yield PAYLOAD

    async def pace() -> None:
        for changed, next_at in deadlines(events):
            changed.set()
            meter.sent += 1
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler(watch),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    while len(events) < meter.streams:
        await asyncio.sleep(0.1)
    pacing = asyncio.create_task(pace())
    await asyncio.sleep(2)  # let the pace settle before measuring
    started = meter.start()
    await asyncio.sleep(meter.seconds)
    meter.report("aio", started)
    pacing.cancel()


def serve(model: str, port: int, streams: int, seconds: float) -> None:
    meter = Meter(streams, seconds)
    if model == "aio":
        asyncio.run(asyncio_model(port, meter))
    else:
        threaded(model, port, meter)
    os._exit(0)  # measured: no need to wind a thousand streams down one by one


def watch_all(port: int, streams: int) -> None:
    """The client process: ``streams`` calls over ten connections, read until killed."""
    os.nice(19)  # on a small machine: let the server have the CPU it is measured on

    async def run() -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(10)]

        async def one(n: int) -> None:
            call = channels[n % 10].unary_stream(
                METHOD, request_serializer=identity, response_deserializer=identity
            )(b"", wait_for_ready=True)
            async for _ in call:
                pass

        await asyncio.gather(*(one(n) for n in range(streams)), return_exceptions=True)

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {args.streams} streams, one message a second each")
    spawn = multiprocessing.get_context("spawn")
    for _ in range(args.rounds):
        for model in ("thread", "callback", "aio"):
            port = free_port()
            server = spawn.Process(target=serve, args=(model, port, args.streams, args.seconds))
            server.start()
            client = spawn.Process(target=watch_all, args=(port, args.streams))
            client.start()
            server.join()
            client.kill()
            client.join()
            if server.exitcode:
                sys.exit(f"the {model} server failed")


if __name__ == "__main__":
    main()
