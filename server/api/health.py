"""grpc's standard health service, with the List RPC its servicer leaves out.

grpcio-health-checking implements Check and Watch only. Its base class
answers List by raising NotImplementedError, which grpc logs at ERROR with a
traceback on every call, so any client could fill the log; generic clients
also use List to see every service's status at once.

The statuses List answers are kept here, from the servicer's public ``set`` and
``enter_graceful_shutdown``, never read from the base class's private fields
(which upstream renames between minor releases).
"""

from __future__ import annotations

import threading
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2

Status = int  # a HealthCheckResponse.ServingStatus value
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthServicer(health.HealthServicer):
    """Check and Watch as grpc answers them, and List from the same statuses.

    Every service starts NOT_SERVING, the overall one ("") included, until told otherwise.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._statuses_lock = threading.Lock()
        self._statuses: dict[str, Status] = {}
        self._shutting_down = False
        self.set("", NOT_SERVING)

    def set(self, service: str, status: Status) -> None:
        """Set a service's status; ignored once a graceful shutdown began, as grpc does."""
        with self._statuses_lock:
            if self._shutting_down:
                return
            self._statuses[service] = status
            super().set(service, status)

    def enter_graceful_shutdown(self) -> None:
        """Every service NOT_SERVING, for good."""
        with self._statuses_lock:
            for service in self._statuses:
                self._statuses[service] = NOT_SERVING
                super().set(service, NOT_SERVING)
            self._shutting_down = True
        super().enter_graceful_shutdown()

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:
        with self._statuses_lock:
            statuses = dict(self._statuses)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )
