"""The HTTP port's calls in the gRPC port's metrics: the same series
(``proca_stats_rpcs_started_total``, ``proca_stats_rpcs_total``,
``proca_stats_rpc_duration_seconds``), the same method names and gRPC's code names,
told apart by their ``protocol`` label (connect, grpc-web, or grpc).

A call is started when its head has arrived, before its body is read, as over gRPC.
Its end is counted once, by whoever answers it: the front for what it refuses
itself (and for connectrpc's bodiless refusals, which it completes), ``CallCount``
for everything connectrpc's handlers see through, refusals of the token check
included.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from connectrpc.code import Code as ConnectCode
from connectrpc.errors import ConnectError
from connectrpc.method import StreamType
from connectrpc.request import RequestContext
from google.protobuf.descriptor import ServiceDescriptor

from proca_stats.server.api.rpc_metrics import GRPC, UNKNOWN_METHOD
from proca_stats.server.metrics import Metrics


def protocol_of(content_type: str | None) -> str:
    """The protocol a request speaks, by its content type (a GET is Connect's)."""
    kind = (content_type or "").lower()
    if kind.startswith("application/grpc-web"):
        return "grpc-web"
    if kind.startswith("application/grpc"):
        return GRPC
    return "connect"


def code_of(error: Exception | None) -> str:
    """gRPC's name of the status a call ended with (Connect spells CANCELLED with one L).

    A ``TimeoutError`` is the front's write timeout: a reader that took nothing."""
    if error is None:
        return "OK"
    if isinstance(error, ConnectError):
        return "CANCELLED" if error.code is ConnectCode.CANCELED else error.code.name
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "UNKNOWN"


class HttpCalls:
    """Counts the HTTP port's calls, or nothing without --metrics-listen."""

    def __init__(self, metrics: Metrics | None, service: ServiceDescriptor) -> None:
        """Calls of ``service``'s methods; other paths under it count as the method
        "unknown", as over gRPC."""
        self._metrics = metrics
        self._prefix = f"/{service.full_name}/"
        self._rpcs = frozenset(self._prefix + method.name for method in service.methods)

    def start(self, http_method: str, path: str, content_type: str | None) -> Call:
        """A request's head has arrived: counted as started when it is a call (a
        preflight is not)."""
        method = None
        if http_method != "OPTIONS" and path.startswith(self._prefix):
            method = path.lstrip("/") if path in self._rpcs else UNKNOWN_METHOD
        call = Call(self, method, protocol_of(content_type))
        if method is not None and self._metrics is not None:
            self._metrics.rpcs_started.labels(method, call.protocol).inc()
        return call

    def answered(self, method: str, protocol: str, code: str, seconds: float | None = None) -> None:
        if self._metrics is None:
            return
        self._metrics.rpcs.labels(method, code, protocol).inc()
        if seconds is not None:
            self._metrics.rpc_seconds.labels(method, protocol).observe(seconds)


@dataclass(frozen=True)
class Call:
    """One request's labels; a request that is no call (``method`` None) counts nowhere."""

    calls: HttpCalls
    method: str | None
    protocol: str

    def answered(self, code: str) -> None:
        """The front answered it with ``code`` (Connect's or gRPC's name, any case)."""
        if self.method is not None:
            self.calls.answered(self.method, self.protocol, code.upper())


class CallCount:
    """connectrpc's first interceptor: the end of every call its handlers see (a
    stream's when it ends), unary ones timed from their head to their answer."""

    def __init__(self, calls: HttpCalls) -> None:
        self._calls = calls

    async def on_start(self, ctx: RequestContext[Any, Any]) -> float:
        return time.perf_counter()

    async def on_end(
        self, started: float, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        method = f"{ctx.method.service_name}/{ctx.method.name}"
        protocol = protocol_of(ctx.request_headers.get("content-type"))
        unary = ctx.method.stream_type is StreamType.UNARY
        seconds = time.perf_counter() - started if unary else None
        self._calls.answered(method, protocol, code_of(error), seconds)
