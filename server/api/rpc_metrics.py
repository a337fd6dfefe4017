"""Every RPC counted by method and final status, and the unary ones timed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc

from proca_stats.server.api.handlers import (
    Continuation,
    Handler,
    Interceptor,
    behavior_of,
    with_behavior,
)
from proca_stats.server.metrics import Metrics

UNKNOWN_METHOD = "unknown"  # the method label of calls to methods this server does not have
GRPC = "grpc"  # the protocol label of this port's calls


class MetricsInterceptor(Interceptor):
    """Counts every RPC by method and final status, and times the unary ones."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:  # gRPC answers UNIMPLEMENTED; the name is the caller's, unbounded
            self._metrics.rpcs_started.labels(UNKNOWN_METHOD, GRPC).inc()
            self._metrics.rpcs.labels(UNKNOWN_METHOD, "UNIMPLEMENTED", GRPC).inc()
            return None
        method = details.method.lstrip("/")
        self._metrics.rpcs_started.labels(method, GRPC).inc()
        behavior = behavior_of(handler)
        count = self._metrics.rpcs
        timing = self._metrics.rpc_seconds

        def code_of(context: grpc.ServicerContext, failed: bool) -> str:
            code = context.code()  # type: ignore[attr-defined]  # grpcio has it; the stubs lag
            if code is None:
                return "UNKNOWN" if failed else "OK"
            return str(code.name)

        if getattr(behavior, "experimental_non_blocking", False):
            # grpc's health Watch: it returns at once and answers later through the
            # callback, so it is counted when the RPC ends; wrapped in a generator
            # it would hold its one-thread pool and starve the next watcher.
            def answered_later(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
                context.add_callback(
                    lambda: count.labels(method, code_of(context, False), GRPC).inc()
                )
                return behavior(request, context, *callback)

            return with_behavior(handler, answered_later, forwards_callback=True)

        if handler.unary_stream or handler.stream_stream:

            def streamed(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                failed = True
                try:
                    yield from behavior(request, context)
                    failed = False
                finally:
                    count.labels(method, code_of(context, failed), GRPC).inc()

            return with_behavior(handler, streamed)

        def answered(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            failed = True
            try:
                response = behavior(request, context)
                failed = False
                return response
            finally:
                timing.labels(method, GRPC).observe(time.perf_counter() - started)
                count.labels(method, code_of(context, failed), GRPC).inc()

        return with_behavior(handler, answered)
