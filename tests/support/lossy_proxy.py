"""A TCP proxy in front of a real server that loses answers, as a network can.

It forwards every byte both ways, reading just enough of HTTP/2's framing (each
frame starts with a 9-byte header: length, type, flags, stream id) to count the
calls that pass (HEADERS frames from the client, one per call or retried
attempt) and to cut the connection when the server's answer to one of the
first ``lose`` calls begins: the request reached the server, which acted on
it, and the client gets UNAVAILABLE without knowing.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import suppress
from types import TracebackType

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a client sends before its first frame
HEADERS = 0x1
FRAME_HEADER = 9


class Frames:
    """Splits a byte stream into HTTP/2 frames: (type, stream id, the frame's bytes)."""

    def __init__(self, skip: int = 0) -> None:
        self._buffer = b""
        self._skip = skip  # the client's preface, which is not framed

    def feed(self, data: bytes) -> Iterator[tuple[int, int, bytes]]:
        self._buffer += data
        if self._skip:
            taken = min(self._skip, len(self._buffer))
            self._skip -= taken
            yield -1, 0, self._buffer[:taken]
            self._buffer = self._buffer[taken:]
        while len(self._buffer) >= FRAME_HEADER:
            length = int.from_bytes(self._buffer[:3], "big")
            end = FRAME_HEADER + length
            if len(self._buffer) < end:
                return
            kind = self._buffer[3]
            stream = int.from_bytes(self._buffer[5:9], "big") & 0x7FFFFFFF
            frame, self._buffer = self._buffer[:end], self._buffer[end:]
            yield kind, stream, frame


class LossyProxy:
    """Listens on 127.0.0.1:``port``, forwards to the server on ``upstream``; loses the
    answers of the first ``lose`` calls. ``calls`` counts the calls (attempts) that passed."""

    def __init__(self, upstream: int, lose: int = 1) -> None:
        self._upstream = upstream
        self._lose = lose
        self._lock = threading.Lock()
        self.calls = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(("127.0.0.1", self._upstream))
            with self._lock:
                self._open += [client, server]
            pair = (client, server)
            threading.Thread(target=self._requests, args=pair, daemon=True).start()
            threading.Thread(target=self._answers, args=pair, daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        frames = Frames(skip=len(PREFACE))
        for data in _received(client):
            for kind, stream, _ in frames.feed(data):
                if kind == HEADERS and stream:
                    with self._lock:
                        self.calls += 1
            if not _send(server, data):
                break
        _cut(client, server)

    def _answers(self, client: socket.socket, server: socket.socket) -> None:
        frames = Frames()
        for data in _received(server):
            for kind, stream, frame in frames.feed(data):
                if kind == HEADERS and stream:
                    with self._lock:
                        lost, self._lose = self._lose > 0, max(0, self._lose - 1)
                    if lost:
                        break
                if not _send(client, frame):
                    break
            else:
                continue
            break
        _cut(client, server)

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            _cut(sock)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _received(sock: socket.socket) -> Iterator[bytes]:
    while True:
        try:
            data = sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        yield data


def _send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def _cut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with suppress(OSError):  # closed already
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
