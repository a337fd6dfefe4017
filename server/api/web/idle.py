"""Closing HTTP connections that hold the server without asking anything of it.

granian's HTTP (hyper) bounds a request head once it has begun, but not the
bytes before it: its automatic choice between HTTP/1.1 and HTTP/2 waits for a
connection's first bytes with no timeout (hyperium/hyper#3756), and rustls for
a TLS handshake likewise. A client could hold any number of connections open by
sending nothing, or half a preface, or half a handshake. So every half of the
idle timeout the server looks at its own accepted connections and shuts down
each that has neither sent nor received data for the idle timeout and has no
request in progress (a watcher whose figures do not change is quiet, and kept).

The kernel tells how long a connection has been quiet (``TCP_INFO``); the
connections are found among the process's descriptors, which granian holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import struct
from collections import Counter

from proca_stats.server.api.web.front import App, Receive, Scope, Send

log = logging.getLogger(__name__)

# struct tcp_info (linux/tcp.h): tcpi_last_data_sent and tcpi_last_data_recv, in ms.
_TCP_INFO_LAST_SENT, _TCP_INFO_LAST_RECV, _TCP_INFO_SIZE = 44, 52, 104
_FDS = "/proc/self/fd"
_TCP = (socket.AF_INET, socket.AF_INET6)

Peer = tuple[str, int]


def _peer(host: str, port: int | str) -> Peer:
    """One spelling of an address, whichever way the ASGI scope (granian's port is a
    string) or the kernel wrote it."""
    return str(ipaddress.ip_address(host.split("%", 1)[0])), int(port)


class InProgress:
    """The ASGI application, counting the requests in progress per peer address."""

    def __init__(self, app: App) -> None:
        self._app = app
        self.peers: Counter[Peer] = Counter()
        self._settled = asyncio.Event()
        self._settled.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        peer = _peer(client[0], client[1]) if client else None
        if peer is not None:
            self.peers[peer] += 1
            self._settled.clear()
        try:
            await self._app(scope, receive, send)
        finally:
            if peer is not None:
                self.peers[peer] -= 1
                if self.peers[peer] <= 0:
                    del self.peers[peer]
                if not self.peers:
                    self._settled.set()

    async def settled(self, seconds: float) -> bool:
        """Whether every request in progress ended within ``seconds``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._settled.wait()
        return self._settled.is_set()


def _quiet_ms(sock: socket.socket) -> int:
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    (sent,) = struct.unpack_from("I", info, _TCP_INFO_LAST_SENT)
    (received,) = struct.unpack_from("I", info, _TCP_INFO_LAST_RECV)
    return int(min(sent, received))


def close_idle(port: int, busy: Counter[Peer], idle: float) -> int:
    """Shut down the accepted connections of ``port`` quiet for ``idle`` seconds and not
    in ``busy``; how many were."""
    closed = 0
    for name in os.listdir(_FDS):
        try:
            if not os.readlink(f"{_FDS}/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # closed meanwhile, or not a socket of a family Python knows
            continue
        with sock, contextlib.suppress(OSError):  # OSError: closed meanwhile
            if sock.family not in _TCP or sock.type != socket.SOCK_STREAM:
                continue
            if sock.getsockname()[1] != port:
                continue
            host, peer_port = sock.getpeername()[:2]  # the listening socket has none: OSError
            if _peer(host, peer_port) in busy or _quiet_ms(sock) < idle * 1000:
                continue
            sock.shutdown(socket.SHUT_RDWR)
            closed += 1
    return closed


async def closing_idle(port: int, app: InProgress, idle: float) -> None:
    """``close_idle`` every half of ``idle``, until cancelled."""
    while True:
        await asyncio.sleep(idle / 2)
        closed = close_idle(port, app.peers, idle)
        if closed:
            log.debug("closed %d HTTP connections quiet for %g s", closed, idle)
