"""The HTTP port: hypercorn runs the web face on an event loop of its own, in one thread
of the server's process, beside gRPC's threads and on the same state.

Why hypercorn: it speaks HTTP/1.1, HTTP/2 over TLS (ALPN) and in clear text
(h2c, by prior knowledge or upgrade), passes ASGI's trailers (so plain gRPC works
on this port too), and runs inside a process that has other work, stopped by an
awaitable of ours. Every stream is a task on its loop, so a thousand watchers
cost memory, not threads, and never take gRPC's.

Bounds against clients that hold the server: a connection with no request in
progress (or whose request head has not fully arrived: slowloris) is closed after
the idle timeout; a body must arrive, and each streamed message be taken, within
the front's (``HttpTimeouts``). The listening socket's TCP options, which accepted
connections inherit, find peers that vanished: keepalive probes on a quiet
connection, ``TCP_USER_TIMEOUT`` on one whose data goes unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import threading

from hypercorn.asyncio import serve
from hypercorn.config import Config

from proca_stats.server.api.tls import ssl_context
from proca_stats.server.api.web.front import Front
from proca_stats.server.settings import HttpTimeouts, TlsKeys

log = logging.getLogger(__name__)

KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 3
USER_TIMEOUT_MS = 60_000  # sent data unacknowledged that long: the peer is gone
MAX_HEAD_BYTES = 64 * 1024  # hypercorn's own cap on a request head (the front's is lower)


class _Config(Config):
    """hypercorn's settings, with a TLS context of ours (it would read files itself)."""

    def __init__(self, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self._context = context

    @property
    def ssl_enabled(self) -> bool:
        return self._context is not None

    def create_ssl_context(self) -> ssl.SSLContext:
        assert self._context is not None
        return self._context


def _listening(host: str, port: int) -> socket.socket:
    """A bound, listening socket whose options every accepted connection inherits."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
        sock.bind(address)
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def _quiet_cancellations(loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
    """The loop's error reports, less one: Python 3.11's asyncio streams report every
    connection task cancelled at shutdown (past the grace) as an error of their own
    callback; a stop is no error."""
    if not isinstance(context.get("exception"), asyncio.CancelledError):
        loop.default_exception_handler(context)


class HttpServer:
    """The web face on HOST:PORT, bound at once (OSError when it cannot be), served from
    ``start`` until ``stop``."""

    def __init__(
        self, front: Front, host: str, port: int, tls: TlsKeys | None, timeouts: HttpTimeouts
    ) -> None:
        sock = _listening(host, port)
        self.port: int = sock.getsockname()[1]
        self._fd = sock.detach()  # hypercorn adopts the socket by its descriptor
        self._front = front
        config = _Config(ssl_context(tls) if tls is not None else None)
        config.bind = [f"fd://{self._fd}"]
        config.keep_alive_timeout = timeouts.idle
        config.ssl_handshake_timeout = timeouts.idle
        config.h11_max_incomplete_size = MAX_HEAD_BYTES
        config.h2_max_header_list_size = MAX_HEAD_BYTES
        config.include_server_header = False
        config.accesslog = None
        config.errorlog = logging.getLogger("proca_stats.server.http")
        self._config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._serving = threading.Event()
        self._failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="proca-stats-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._serving.wait()
        if self._failed is not None:
            raise self._failed

    def shutdown(self, grace: float | None = None) -> None:
        """Stop taking connections; requests in flight get ``grace`` seconds to end (see
        ``join``). Safe to call more than once, and before ``start``."""
        if self._loop is None or self._stopping is None:
            if self._fd >= 0:  # never served: the socket is still ours to close
                os.close(self._fd)
                self._fd = -1
            return
        self._config.graceful_timeout = grace or 0.0
        with contextlib.suppress(RuntimeError):  # the loop has ended already
            self._loop.call_soon_threadsafe(self._stopping.set)

    def join(self) -> None:
        """Wait until the server has stopped (after ``shutdown``)."""
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start(), or logged once serving
            if self._serving.is_set():
                log.exception("the HTTP server failed")
            self._failed = error
        finally:
            self._serving.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_exception_handler(_quiet_cancellations)
        self._stopping = asyncio.Event()
        self._loop.call_soon(self._serving.set)  # once serve() below has started
        await serve(self._front, self._config, shutdown_trigger=self._stopping.wait, mode="asgi")  # type: ignore[arg-type]
