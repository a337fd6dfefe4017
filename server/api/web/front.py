"""What HTTP asks of the web face before and around the RPCs: probes, CORS, conditional
GETs, and bounds on what a client may make the server hold or wait for.

Every request is answered by the RPC application or here, never by a traceback:
an unknown path, a refused preflight, a head or body too large or too slow, each
gets a 4xx with a Connect error body (JSON ``{"code": …, "message": …}``), and
connectrpc's own bodiless refusals (405, 415) get one too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import quote

from proca_stats.server.api.rpc_metrics import GRPC
from proca_stats.server.api.web.connect import READS, SERVICE
from proca_stats.server.api.web.counting import Call, HttpCalls
from proca_stats.server.settings import HttpTimeouts

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

RPCS = frozenset(f"/{SERVICE.full_name}/{method.name}" for method in SERVICE.methods)
ENVELOPE = 5  # the frame header of a streamed or gRPC-Web message
# The request line and headers together; what passes granian's own larger cap
# and not this one gets a Connect error body rather than a bare status.
MAX_HEAD_BYTES = 32 * 1024
# The request headers browsers' Connect and gRPC-Web clients send on a read.
ALLOWED_HEADERS = (
    "authorization, content-type, connect-protocol-version, connect-timeout-ms, "
    "connect-accept-encoding, connect-content-encoding, grpc-timeout, x-grpc-web, "
    "x-user-agent, if-none-match"
)
EXPOSED_HEADERS = "grpc-status, grpc-message, grpc-status-details-bin, etag"
PREFLIGHT_MAX_AGE = 7200
# Plain gRPC needs HTTP trailers, which granian cannot send; its clients are told, in the
# answer gRPC allows without trailers (status in the head), where gRPC is served.
PLAIN_GRPC = "this is the HTTP port (Connect, gRPC-Web): call gRPC on the gRPC port (--listen)"
# The Connect code an empty refusal of connectrpc's stands for.
CODES = {404: "unimplemented", 405: "unimplemented", 415: "invalid_argument"}
MESSAGES = {
    405: "this procedure takes POST (GET only for the side-effect-free ones)",
    415: "content-type: expected application/json or application/proto (Connect), "
    "application/connect+json or +proto (streams), application/grpc-web+proto or +json",
}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Iterable[tuple[bytes, bytes]],
) -> None:
    start = [(b"content-type", content_type), *headers]
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"code": code, "message": message}).encode()


async def refuse(
    send: Send,
    status: int,
    code: str,
    message: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
    call: Call | None = None,
) -> None:
    """A Connect error answer, counted as the end of ``call`` when it is one (before it
    goes out, so that a client that has it sees it counted)."""
    if call is not None:
        call.answered(code)
    await respond(send, status, error_body(code, message), b"application/json", headers)


class Cors:
    """Which origins may read, and the headers that tell browsers so.

    Writes are never allowed from a browser, whatever the origins: no preflight
    for them is granted, and a write that carries an ``Origin`` is refused.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        listed = tuple(origins)
        self._any = "*" in listed
        self._origins = frozenset(o for o in listed if o != "*")

    def allow(self, origin: str | None) -> Headers:
        """The headers that let a page of ``origin`` read the answer; none when it may not."""
        if origin is None:
            return []
        if self._any:
            return [(b"access-control-allow-origin", b"*")]
        if origin in self._origins:
            return [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"vary", b"Origin"),
            ]
        return []


class Front:
    """The ASGI application granian runs: probes and CORS here, RPCs to ``rpc``."""

    def __init__(
        self,
        rpc: App,
        *,
        ready: Callable[[], bool],
        cors: Cors,
        max_request_bytes: int,
        timeouts: HttpTimeouts,
        calls: HttpCalls,
    ) -> None:
        self._rpc = rpc
        self._ready = ready
        self._cors = cors
        self._body_cap = max_request_bytes + ENVELOPE
        self._timeouts = timeouts
        self._calls = calls

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._rpc(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets: refused at the handshake
            await send({"type": "websocket.close", "code": 1003})
            return
        path, method = scope["path"], scope["method"]
        call = self._calls.start(method, path, _header(scope, b"content-type"))
        head = len(scope.get("raw_path", b"")) + len(scope.get("query_string", b""))
        head += sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if head > MAX_HEAD_BYTES:
            await refuse(
                send,
                431,
                "resource_exhausted",
                f"request head: {head} bytes, more than {MAX_HEAD_BYTES}",
                call=call,
            )
        elif call.protocol == GRPC:
            call.answered("unimplemented")
            grpc_status = [(b"grpc-status", b"12"), (b"grpc-message", quote(PLAIN_GRPC).encode())]
            await respond(send, 200, b"", b"application/grpc", grpc_status)
        elif path in ("/healthz", "/readyz"):
            await self._probe(path, method, send)
        elif method == "OPTIONS":
            await self._preflight(scope, send)
        elif path not in RPCS:
            known = path.startswith(f"/{SERVICE.full_name}/")
            await refuse(
                send,
                404,
                "unimplemented" if known else "not_found",
                f"no procedure {path}" if known else f"nothing is served at {path}",
                call=call,
            )
        elif path not in READS and _header(scope, b"origin") is not None:
            await refuse(
                send,
                403,
                "permission_denied",
                f"{path} changes the counters and is not for browsers: call it from a server",
                call=call,
            )
        else:
            await self._call(scope, receive, send, call)

    async def _probe(self, path: str, method: str, send: Send) -> None:
        """``/healthz``: the process lives; ``/readyz``: it serves figures."""
        if method not in ("GET", "HEAD"):
            await refuse(send, 405, "unimplemented", f"{path} takes GET", [(b"allow", b"GET")])
            return
        ready = path == "/healthz" or self._ready()
        text = b"serving\n" if ready else b"not serving: no figures yet, or stopping\n"
        headers = [(b"cache-control", b"no-store")]
        await respond(send, 200 if ready else 503, text, b"text/plain; charset=utf-8", headers)

    async def _preflight(self, scope: Scope, send: Send) -> None:
        path = scope["path"]
        allowed = self._cors.allow(_header(scope, b"origin"))
        wanted = (_header(scope, b"access-control-request-method") or "").upper()
        if path not in READS or not allowed or wanted not in ("GET", "POST"):
            await refuse(
                send,
                403,
                "permission_denied",
                f"no cross-origin {wanted or 'call'} of {path} from this origin "
                "(reads only, from the --cors-origin origins)",
            )
            return
        headers = [
            *allowed,
            (b"access-control-allow-methods", b"GET, POST"),
            (b"access-control-allow-headers", ALLOWED_HEADERS.encode()),
            (b"access-control-max-age", str(PREFLIGHT_MAX_AGE).encode()),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _call(self, scope: Scope, receive: Receive, send: Send, call: Call) -> None:
        path = scope["path"]
        if scope["method"] == "POST":
            body = await self._body(receive, send, call)
            if body is None:
                return
            receive = _replaying(body, receive)
        cors = self._cors.allow(_header(scope, b"origin")) if path in READS else []
        if cors:
            cors.append((b"access-control-expose-headers", EXPOSED_HEADERS.encode()))
        deadline = _WriteDeadline(self._timeouts.write)
        answer = _Answer(send, cors, _header(scope, b"if-none-match"), deadline, call)
        try:
            await self._rpc(scope, receive, answer.send)
        except TimeoutError:
            log.debug("dropped a reader of %s that took nothing for %g s", path, deadline.seconds)
        finally:
            deadline.close()

    async def _body(self, receive: Receive, send: Send, call: Call) -> bytes | None:
        """The request's body, read within the body timeout; past the size cap only its
        first bytes, which connectrpc refuses in the request's own protocol. None when
        the request was answered here or the client left."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._timeouts.body):
                while size <= self._body_cap:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    chunks.append(chunk)
                    size += len(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await refuse(
                send,
                408,
                "deadline_exceeded",
                f"request body: not received within {self._timeouts.body:g} s",
                call=call,
            )
            return None
        return b"".join(chunks)[: self._body_cap + 1]


class _WriteDeadline:
    """Drops a reader that takes no message for ``seconds``: its sends end in TimeoutError,
    that one and every later one.

    One timer per request, which looks every ``seconds`` whether a send has been
    waiting that long, rather than a timeout around each send: a stream's message
    then costs a clock read, not a timer set and cancelled.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._loop = asyncio.get_running_loop()
        self._sending: asyncio.Task[Any] | None = None  # the task waiting in a send
        self._since = 0.0  # when that send began
        self._expired = False
        self._timer = self._loop.call_later(seconds, self._check)

    async def send(self, send: Send, message: Message) -> None:
        if self._expired:
            raise TimeoutError
        self._sending, self._since = asyncio.current_task(), self._loop.time()
        try:
            await send(message)
        except asyncio.CancelledError:
            # By _check alone: the send took too long. Another cancellation (a
            # shutdown's) goes on as it came.
            if self._expired and self._sending is not None and self._sending.uncancel() == 0:
                raise TimeoutError from None
            raise
        finally:
            self._sending = None

    def _check(self) -> None:
        now = self._loop.time()
        if self._sending is None:
            self._timer = self._loop.call_at(now + self.seconds, self._check)
        elif now - self._since >= self.seconds:
            self._expired = True
            self._sending.cancel()
        else:
            self._timer = self._loop.call_at(self._since + self.seconds, self._check)

    def close(self) -> None:
        self._timer.cancel()


def _opaque(tag: str) -> str:
    """An entity tag as If-None-Match compares it: weakly, so W/"x" and "x" match."""
    return tag.strip().removeprefix("W/")


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body read already, then the client's later messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


class _Answer:
    """The RPC application's send, adding CORS headers, turning a 200 whose ETag the
    client holds into a 304, giving connectrpc's bodiless refusals a Connect error body
    (and counting them: connectrpc's interceptors never see them), and dropping a reader
    that takes no message within the write timeout."""

    def __init__(
        self,
        send: Send,
        cors: Headers,
        held_tag: str | None,
        deadline: _WriteDeadline,
        call: Call,
    ) -> None:
        self._send = send
        self._call = call
        self._cors = cors
        self._held = {_opaque(t) for t in held_tag.split(",")} if held_tag else set()
        self._deadline = deadline
        self._rewritten: bool = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            message = self._start(message)
        elif message["type"] == "http.response.body" and self._rewritten:
            if message.get("more_body", False):
                return
            message = {"type": "http.response.body", "body": self._body, "more_body": False}
        await self._deadline.send(self._send, message)

    def _start(self, message: Message) -> Message:
        status: int = message["status"]
        headers: Headers = [*message.get("headers", ()), *self._cors]
        names = {k.lower() for k, _ in headers}
        self._body = b""
        if status == 200 and self._held:
            tag = next((v.decode("latin-1") for k, v in headers if k.lower() == b"etag"), None)
            if tag is not None and (_opaque(tag) in self._held or "*" in self._held):
                self._rewritten = True
                kept = (b"etag", b"cache-control", b"vary", b"access-control-allow-origin")
                headers = [(k, v) for k, v in headers if k.lower() in kept]
                return {"type": "http.response.start", "status": 304, "headers": headers}
        if status >= 400 and b"content-type" not in names:
            self._rewritten = True
            code = CODES.get(status, "unknown")
            self._body = error_body(code, MESSAGES.get(status, f"refused with HTTP {status}"))
            headers.append((b"content-type", b"application/json"))
            self._call.answered(code)
        return {**message, "headers": headers}
