"""Calling a server's HTTP port as HTTP clients do: plain HTTP/1.1 requests and Connect
server streams read frame by frame with the standard library, HTTP/2 with the h2 library's
frames, so that every byte on the wire is the test's own."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import ssl
import struct
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import h2.config
import h2.connection
import h2.events
import pytest

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


def h2_exchange(
    sock: socket.socket | ssl.SSLSocket,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> tuple[dict[str, str], bytes]:
    """One HTTP/2 request on a connected socket (h2c by prior knowledge, or TLS after ALPN
    chose h2), spoken frame by frame with the h2 library: the answer's headers and body."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    scheme = "https" if isinstance(sock, ssl.SSLSocket) else "http"
    head = [(":method", method), (":scheme", scheme), (":authority", "127.0.0.1"), (":path", path)]
    if body is not None:
        head.append(("content-length", str(len(body))))
    connection.send_headers(stream, [*head, *headers], end_stream=body is None)
    if body is not None:
        connection.send_data(stream, body, end_stream=True)
    sock.sendall(connection.data_to_send())
    answer_headers: dict[str, str] = {}
    answer = b""
    ended = False
    while not ended:
        data = sock.recv(65536)
        assert data, "the server closed the connection before the answer ended"
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                answer_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                answer += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                ended = True
        sock.sendall(connection.data_to_send())
    return answer_headers, answer


def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float:
    """How long until the server closes ``sock``, sending a byte of ``trickle`` every 0.2 s."""
    started = time.monotonic()
    sock.settimeout(0.2)
    for byte in [trickle[i : i + 1] for i in range(len(trickle))] or [b""] * 10_000:
        try:
            if byte:
                sock.sendall(byte)
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            break
    pytest.fail(f"the connection was still open after {seconds} s")
