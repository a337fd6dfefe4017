"""A running proca-stats: gRPC server, store, sync and health, started and stopped together."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg_pool import ConnectionPool

from proca_stats.client.v1 import stats_pb2

from .config import ServeConfig
from .counters import Snapshot
from .handover import Lookup, swap_in
from .refresh import Refresher
from .service import StatsServicer
from .store import StatsStore
from .sync import SyncWorker

log = logging.getLogger(__name__)

SERVICE_NAME: str = stats_pb2.DESCRIPTOR.services_by_name["StatsService"].full_name


class BindError(RuntimeError):
    """The listen address cannot be used (port in use, unknown host, no permission)."""


class StatsServer:
    """Everything `proca-stats serve` runs, over a database given by URL."""

    def __init__(self, config: ServeConfig, database_url: str) -> None:
        self.store = StatsStore()
        self._pool = ConnectionPool(
            database_url,
            # Two keep snapshots (the held one and the next), one reads in them.
            min_size=1,
            max_size=3,
            open=False,
            name="proca-stats-sync",
            kwargs={
                "application_name": "proca-stats",
                "connect_timeout": max(1, round(config.connect_timeout)),
            },
        )
        self.refresher = Refresher(
            self._pool,
            connect_timeout=config.connect_timeout,
            full_interval=config.full_sync_interval_ms / 1000,
            slow_interval=config.slow_sync_interval_ms / 1000,
            overlap=config.change_overlap_ms / 1000,
        )
        self.sync = SyncWorker(
            self.refresher,
            self._deliver,
            interval=config.sync_interval_ms / 1000,
            increments_before=self.store.arrivals,
        )
        self._health = health.HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.workers, thread_name_prefix="proca-stats-rpc"
            ),
            # Without this, a second server on the same port would start silently.
            options=[("grpc.so_reuseport", 0)],
        )
        self._grpc.add_generic_rpc_handlers((_stats_handler(StatsServicer(self.store)),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        try:
            self.port = self._grpc.add_insecure_port(config.listen)
        except RuntimeError as error:
            raise BindError(f"cannot listen on {config.listen}: {error}") from None
        if self.port == 0:
            raise BindError(f"cannot listen on {config.listen}")

    def start(self) -> None:
        """Serve at once; figures come when the first calculation succeeds."""
        self._grpc.start()
        self._pool.open(wait=False)
        self.sync.start()

    def stop(self, grace: float | None = None) -> None:
        """Finish in-flight RPCs within ``grace`` seconds, then stop the sync and close the pool."""
        self._health.enter_graceful_shutdown()
        self._grpc.stop(grace).wait()
        self.sync.stop()
        self._pool.close()

    def _deliver(self, snapshot: Snapshot, seen: Lookup) -> None:
        reapplied = swap_in(self.store, snapshot, seen)
        if reapplied:
            log.debug("re-applied %d increments the snapshot had not seen", reapplied)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)


def _stats_handler(servicer: StatsServicer) -> grpc.GenericRpcHandler[Any, Any]:
    """StatsService's methods, GetStats answering with already serialized bytes."""
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Increment": grpc.unary_unary_rpc_method_handler(
                servicer.Increment,
                request_deserializer=stats_pb2.IncrementRequest.FromString,
                response_serializer=stats_pb2.IncrementResponse.SerializeToString,
            ),
            "GetStats": grpc.unary_unary_rpc_method_handler(
                servicer.serialized_stats,
                request_deserializer=stats_pb2.GetStatsRequest.FromString,
                response_serializer=None,  # the bytes as they are
            ),
        },
    )
