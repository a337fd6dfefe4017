"""The HTTP port: granian serves the web face on an event loop of its own, in one thread
of the server's process, beside gRPC's threads and on the same state.

Why granian: its HTTP/1.1 and HTTP/2 (h2c by prior knowledge, and over TLS with
ALPN) are Rust's hyper and rustls, off the interpreter's lock, so the Python
work of a message sent to a watcher is the ASGI application's alone; a thousand
watchers then cost gRPC's threads less of the lock than with a Python HTTP
server (bench/README.md, "Web face"). Its embedded server runs as tasks on a
loop of ours, stopped by a call of ours. Every stream is a task on that loop, so
watchers cost memory, not threads. What it costs is in docs/web.md.

granian is embedded through some of its inner parts (the server adopts a socket
we made, and is given the TLS files by descriptor), so its version is pinned to
a minor release in pyproject.toml.

Bounds against clients that hold the server: a request head must arrive within
the idle timeout (granian's own), a body and each streamed message within the
front's (``HttpTimeouts``); a connection quiet that long with no request in
progress, including one that never finished its first bytes or its TLS
handshake, is closed by ``idle.closing_idle``. The listening socket's TCP options,
which accepted connections inherit, find peers that vanished: keepalive probes on
a quiet connection, ``TCP_USER_TIMEOUT`` on one whose data goes unacknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading

from granian._granian import SocketHolder
from granian.constants import HTTPModes, Interfaces
from granian.http import HTTP1Settings, HTTP2Settings
from granian.log import LogLevels
from granian.server.embed import Server

from proca_stats.server.api.web.front import Front
from proca_stats.server.api.web.idle import InProgress, closing_idle
from proca_stats.server.settings import HttpTimeouts, TlsKeys

log = logging.getLogger(__name__)

KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 60, 10, 3
USER_TIMEOUT_MS = 60_000  # sent data unacknowledged that long: the peer is gone
BACKLOG = 1024
MAX_HEAD_BYTES = 64 * 1024  # granian's own cap on a request head (the front's is lower)
# Requests in progress at once: watchers are requests, and each costs only a task.
MAX_REQUESTS = 65_536
# granian's log records go to ours, and only its errors: its info lines describe its
# own workers, which the embedded server does not have in the sense they mean.
LOGGING = {
    "incremental": True,
    "handlers": {},
    "loggers": {"_granian": {"propagate": True}, "granian.access": {"propagate": True}},
}


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
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class _InMemoryFiles:
    """Paths to PEM contents that never touch a disk: anonymous in-memory files, which
    rustls reads by path (``/proc/self/fd/N``) when granian's worker starts."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def path(self, data: bytes) -> str:
        fd = os.memfd_create("proca-stats-tls", os.MFD_CLOEXEC)
        self._fds.append(fd)
        os.write(fd, data)
        return f"/proc/self/fd/{fd}"

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


class _Embedded(Server):
    """granian's embedded server on a socket of ours, with TLS from the PEM in memory."""

    def __init__(
        self, app: InProgress, sock: int, tls: TlsKeys | None, timeouts: HttpTimeouts
    ) -> None:
        super().__init__(
            app,
            interface=Interfaces.ASGINL,
            http=HTTPModes.auto,
            websockets=False,
            backlog=BACKLOG,
            backpressure=MAX_REQUESTS,
            http1_settings=HTTP1Settings(
                header_read_timeout=int(timeouts.idle * 1000), max_buffer_size=MAX_HEAD_BYTES
            ),
            http2_settings=HTTP2Settings(max_headers_size=MAX_HEAD_BYTES),
            log_level=LogLevels.error,
            log_dictconfig=LOGGING,
        )
        self._socket = sock
        self.files = _InMemoryFiles()
        if tls is not None:
            ca = self.files.path(tls.client_ca) if tls.client_ca is not None else None
            # granian's attribute is typed as inferred from its "no TLS" value.
            self.ssl_ctx = (  # type: ignore[assignment]  # the tuple build_ssl_context makes
                True,
                self.files.path(tls.cert),
                self.files.path(tls.key),
                None,  # no passphrase: the settings refuse encrypted keys
                "tls1.2",  # the lowest version offered
                ca,
                [],
                ca is not None,  # a client CA: client certificates required
            )

    def _init_shared_socket(self) -> None:
        """Adopt our socket where granian would bind its own (its stubs type the
        attributes as None, their value before, and SocketHolder without arguments)."""
        self._shd = SocketHolder(self._socket, False, BACKLOG)  # type: ignore[call-arg,assignment]
        self._sfd = self._socket  # type: ignore[assignment]


class HttpServer:
    """The web face on HOST:PORT, bound at once (OSError when it cannot be), served from
    ``start`` until ``stop``."""

    def __init__(
        self, front: Front, host: str, port: int, tls: TlsKeys | None, timeouts: HttpTimeouts
    ) -> None:
        sock = _listening(host, port)
        self.port: int = sock.getsockname()[1]
        self._fd = sock.detach()  # granian adopts the socket by its descriptor
        self._app = InProgress(front)
        self._tls = tls
        self._timeouts = timeouts
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Embedded | None = None
        self._grace = 0.0
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
        if self._loop is None or self._server is None:
            if self._fd >= 0:  # never served: the socket is still ours to close
                os.close(self._fd)
                self._fd = -1
            return
        self._grace = grace or 0.0
        with contextlib.suppress(RuntimeError):  # the loop has ended already
            self._loop.call_soon_threadsafe(self._server.stop)

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
        server = _Embedded(self._app, self._fd, self._tls, self._timeouts)
        self._loop, self._server = asyncio.get_running_loop(), server
        self._loop.call_soon(self._serving.set)  # once serve() below has started
        reaper = asyncio.create_task(closing_idle(self.port, self._app, self._timeouts.idle))
        try:
            await server.serve()  # until stopped: granian takes no more requests
            if not await self._app.settled(self._grace):  # the rest end with the loop
                log.info(
                    "HTTP requests still running %g s after the stop were cut off", self._grace
                )
        finally:
            reaper.cancel()
            server.files.close()
