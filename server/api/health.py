"""grpc's standard health service, with the List RPC its servicer leaves out.

grpcio-health-checking implements Check and Watch only. Its base class
answers List by raising NotImplementedError, which grpc logs at ERROR with a
traceback on every call, so any client could fill the log; generic clients
also use List to see every service's status at once.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.HealthServicer):
    """Check and Watch as grpc answers them, and List from the same statuses."""

    def List(self, request: health_pb2.HealthListRequest, context: grpc.ServicerContext) -> Any:
        # The statuses live in the base class, under its lock; Check reads them alike.
        with self._lock:
            statuses = dict(self._server_status)
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in statuses.items()
            }
        )
