"""The standard ``grpc.health.v1.Health`` service: Check, Watch and List over our own statuses.

grpcio-health-checking's servicer is not used: it answers List with
NotImplementedError (which grpc logs at ERROR with a traceback on every call),
its List would have to read its private fields (renamed between minor
releases), and its Watch sends under the lock that its end-of-call callback
takes on gRPC's serving thread — a Watch cancelled while it sends then stalls
that thread and every later set(), a shutdown included. Here statuses and
watchers live under one lock that is never held while a message is sent.

Watch is non-blocking: it sends the current status, registers the stream and
returns at once, so one thread serves every watcher (grpc's own design).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from proca_stats.server.api.grpc_service import SERVICE

Status = int  # a HealthCheckResponse.ServingStatus value
Response = health_pb2.HealthCheckResponse
SERVING = Response.SERVING
NOT_SERVING = Response.NOT_SERVING

# The services whose status is the server's readiness: overall, and StatsService's own.
READY_SERVICES = ("", SERVICE.full_name)
# A health-only name: SERVING while this replica hears the others' Increments.
FANOUT_SERVICE = "proca.stats.v1.Fanout"

Send = Callable[[Any], None]  # gRPC's send_response_callback: a response, or None to end


class _Stream:
    """One Watch stream: statuses go out in the order they were set, never an older after a
    newer one, whichever threads send them."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._sent = -1  # version of the last status sent

    def send(self, version: int, status: Status) -> None:
        with self._lock:
            if version > self._sent:
                self._sent = version
                self._send(Response(status=status))

    def end(self) -> None:
        self._send(None)


class HealthServicer:
    """Every service starts NOT_SERVING, the overall one ("") included, until told otherwise;
    after ``enter_graceful_shutdown`` every one is NOT_SERVING for good."""

    def __init__(self, pool: futures.ThreadPoolExecutor) -> None:
        """``pool`` runs the Watch calls (one thread is enough: they return at once)."""
        self._lock = threading.Lock()
        self._statuses: dict[str, Status] = {"": NOT_SERVING}
        self._streams: dict[str, set[_Stream]] = {}
        self._version = 0  # of the last change, for the streams' order
        self._shutting_down = False
        watch = functools.partial(type(self).Watch, self)
        watch.__dict__.update(experimental_non_blocking=True, experimental_thread_pool=pool)
        self.Watch = watch  # type: ignore[method-assign]  # grpc reads these attributes

    def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext) -> Any:
        with self._lock:
            status = self._statuses.get(request.service)
        if status is None:
            context.set_code(grpc.StatusCode.NOT_FOUND)
            return Response()
        return Response(status=status)

    def Watch(
        self,
        request: health_pb2.HealthCheckRequest,
        context: grpc.ServicerContext,
        send_response_callback: Send | None = None,
    ) -> None:
        assert send_response_callback is not None, "registered as non-blocking"
        stream = _Stream(send_response_callback)
        service = request.service
        with self._lock:
            status = self._statuses.get(service, Response.SERVICE_UNKNOWN)
            version = self._version
            self._streams.setdefault(service, set()).add(stream)

        def ended() -> None:
            with self._lock:
                self._streams.get(service, set()).discard(stream)
            stream.end()

        context.add_callback(ended)
        stream.send(version, status)

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:
        with self._lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={name: Response(status=status) for name, status in statuses.items()}
        )

    def serving(self, service: str) -> bool:
        """Whether ``service`` is SERVING now."""
        with self._lock:
            status = self._statuses.get(service)
        return bool(status == SERVING)

    def set(self, service: str, status: Status) -> None:
        """Set a service's status and tell its watchers; ignored once shutting down."""
        with self._lock:
            if self._shutting_down:
                return
            told = self._change({service: status})
        self._tell(told)

    def set_serving(self, services: tuple[str, ...], serving: bool) -> None:
        for service in services:
            self.set(service, SERVING if serving else NOT_SERVING)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good."""
        with self._lock:
            self._shutting_down = True
            told = self._change(dict.fromkeys(self._statuses, NOT_SERVING))
        self._tell(told)

    def _change(self, statuses: dict[str, Status]) -> list[tuple[_Stream, int, Status]]:
        """Record the statuses (the caller holds the lock); what each watcher is to be sent."""
        self._version += 1
        self._statuses.update(statuses)
        return [
            (stream, self._version, status)
            for service, status in statuses.items()
            for stream in self._streams.get(service, ())
        ]

    @staticmethod
    def _tell(told: list[tuple[_Stream, int, Status]]) -> None:
        """Send outside the lock: a send waits for gRPC's serving thread."""
        for stream, version, status in told:
            stream.send(version, status)
