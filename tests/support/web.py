"""Calling a server's HTTP port as HTTP clients do: plain HTTP/1.1 requests, and Connect
server streams read frame by frame (with the standard library only, so that every byte
on the wire is the test's own)."""

from __future__ import annotations

import asyncio
import http.client
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from proca_stats.server.app import StatsServer
from tests.support.waiting import wait_for

SERVICE = "/proca.stats.v1.StatsService"
END_STREAM = 0x02


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def start_web(
    start_server: Callable[..., StatsServer], database_url: str, ready: bool = True, **config: Any
) -> StatsServer:
    """A server with its HTTP port on a free port (after its first calculation when ``ready``)."""
    server = start_server(database_url, http_listen="127.0.0.1:0", **config)
    if ready:
        wait_for(lambda: server.store.synced_at, what="the first calculation")
    return server


def port_of(server: StatsServer) -> int:
    assert server.http is not None
    return server.http.port


def request(
    server: StatsServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=10)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        connection.close()


def post_json(
    server: StatsServer, rpc: str, message: dict[str, Any], headers: dict[str, str] | None = None
) -> Answer:
    """A Connect unary call with a JSON body."""
    return request(
        server,
        "POST",
        f"{SERVICE}/{rpc}",
        json.dumps(message).encode(),
        {"content-type": "application/json"} | (headers or {}),
    )


def get_path(rpc: str, message: dict[str, Any]) -> str:
    """A Connect GET of a side-effect-free RPC, its message in the query."""
    text = quote(json.dumps(message, separators=(",", ":")))
    return f"{SERVICE}/{rpc}?encoding=json&message={text}&connect=v1"


def envelope(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return struct.pack(">BI", 0, len(data)) + data


@contextmanager
def connect_stream(
    server: StatsServer, message: dict[str, Any], headers: dict[str, str] | None = None
) -> Iterator[Iterator[tuple[int, Any]]]:
    """A WatchStats Connect stream: (flags, JSON) per frame, the last with END_STREAM."""
    connection = http.client.HTTPConnection("127.0.0.1", port_of(server), timeout=20)
    connection.request(
        "POST",
        f"{SERVICE}/WatchStats",
        body=envelope(message),
        headers={"content-type": "application/connect+json"} | (headers or {}),
    )
    response = connection.getresponse()
    assert response.status == 200, response.read()

    def frames() -> Iterator[tuple[int, Any]]:
        while header := response.read(5):
            flags, size = struct.unpack(">BI", header)
            yield flags, json.loads(response.read(size))
            if flags & END_STREAM:
                return

    try:
        yield frames()
    finally:
        connection.close()


async def async_stream(
    port: int, message: dict[str, Any], connected: asyncio.Event | None = None
) -> AsyncIterator[Any]:
    """The messages of a WatchStats Connect stream over HTTP/1.1, read on an event loop, so
    that one test process can hold hundreds of streams."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = envelope(message)
    writer.write(
        f"POST {SERVICE}/WatchStats HTTP/1.1\r\nhost: 127.0.0.1\r\n"
        f"content-type: application/connect+json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        if connected is not None:
            connected.set()
        buffer = b""
        while True:  # chunked transfer coding, then Connect's frames inside it
            size = int((await reader.readline()).strip(), 16)
            if size == 0:
                return
            buffer += (await reader.readexactly(size + 2))[:-2]
            while len(buffer) >= 5 and len(buffer) >= 5 + struct.unpack(">I", buffer[1:5])[0]:
                flags, length = struct.unpack(">BI", buffer[:5])
                data, buffer = buffer[5 : 5 + length], buffer[5 + length :]
                if flags & END_STREAM:
                    return
                yield json.loads(data)
    finally:
        writer.close()
