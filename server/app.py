"""A running proca-stats: gRPC server, store, sync and health, started and stopped together."""

from __future__ import annotations

import functools
import logging
from concurrent import futures

import grpc
import psycopg
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from psycopg_pool import ConnectionPool

from proca_stats.server.api.answers import Answers
from proca_stats.server.api.auth import TokenAuthInterceptor, read_methods
from proca_stats.server.api.grpc_service import (
    ANSWERED_WITH_BYTES,
    SERVICE,
    StatsServicer,
    add_stats_service,
)
from proca_stats.server.api.handlers import Interceptor
from proca_stats.server.api.health import HealthServicer
from proca_stats.server.api.malformed import MalformedRequests
from proca_stats.server.api.rpc_metrics import MetricsInterceptor
from proca_stats.server.api.tls import server_credentials
from proca_stats.server.database import connection_options
from proca_stats.server.fanout.replicas import Fanout
from proca_stats.server.metrics import Metrics
from proca_stats.server.settings import ServeConfig, parse_listen
from proca_stats.server.state.counters import Snapshot
from proca_stats.server.state.handover import Lookup, swap_in
from proca_stats.server.state.store import StatsStore
from proca_stats.server.state.watchers import Watchers
from proca_stats.server.sync.changes import UpdatedAt
from proca_stats.server.sync.detection import Detection
from proca_stats.server.sync.feed import open_feed
from proca_stats.server.sync.keeper import StateKeeper
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, Snapshots
from proca_stats.server.sync.worker import SyncWorker

log = logging.getLogger(__name__)

SERVICE_NAME: str = SERVICE.full_name
# A health-only name: SERVING while this replica hears the others' Increments.
FANOUT_SERVICE_NAME = "proca.stats.v1.Fanout"

REFUSING_THREADS = 4  # WatchStats threads beyond the limit, to answer RESOURCE_EXHAUSTED


def _run_on_pool(servicer: object, method: str, pool: futures.ThreadPoolExecutor) -> None:
    """Make gRPC run one RPC of ``servicer`` on ``pool`` rather than on the server's pool.

    gRPC's sync server runs a handler on the pool named by its behaviour's
    ``experimental_thread_pool`` attribute (grpc's own health service uses it
    for Watch). The attribute goes on a copy bound to this servicer, not on the
    class, so that several servers in one process keep their pools apart.
    """
    behaviour = functools.partial(getattr(type(servicer), method), servicer)
    behaviour.__dict__["experimental_thread_pool"] = pool
    setattr(servicer, method, behaviour)


def change_detection(config: ServeConfig, url: str, metrics: Metrics) -> Detection:
    """How the sync finds changes (``--change-feed``), reporting it to the metrics."""
    feed = None
    if config.change_feed != "updated-at":
        feed = open_feed(
            url,
            config.feed_slot,
            create=config.change_feed == "logical",
            connect_timeout=config.connect_timeout,
            lag=metrics.feed_lag.labels(config.feed_slot).set,
        )
    overlap = config.change_overlap_ms / 1000
    return Detection(UpdatedAt(overlap), feed, metrics.change_feed)


class BindError(RuntimeError):
    """The listen address cannot be used (port in use, unknown host, no permission)."""


class StatsServer:
    """Everything `proca-stats serve` runs, over a database given by URL."""

    def __init__(self, config: ServeConfig, database_url: str) -> None:
        self.watchers = Watchers(config.max_watchers)
        self.store = StatsStore(config.limits, self.watchers)
        self.metrics = Metrics(campaigns=self.store.__len__)
        self._pool = ConnectionPool(
            # Calculations only read: they may use a read replica. LISTEN/NOTIFY needs the primary.
            config.sync_database_url or database_url,
            min_size=1,
            max_size=CONNECTIONS,  # all a Refresher holds at once
            open=False,
            name="proca-stats-sync",
            # A connection broken while idle (database restarted) is replaced, not used.
            check=ConnectionPool.check_connection,
            kwargs=connection_options("proca-stats", config.connect_timeout),
        )
        self.changes = change_detection(
            config, config.sync_database_url or database_url, self.metrics
        )
        self.state = (
            StateKeeper(config.state_dir, self.store, self._pool, config.connect_timeout)
            if config.state_dir
            else None
        )
        self.refresher = Refresher(
            Snapshots(
                self._pool,
                connect_timeout=config.connect_timeout,
                timeout=config.sync_timeout_ms / 1000,
            ),
            self.changes,
            full_interval=config.full_sync_interval_ms / 1000,
            slow_interval=config.slow_sync_interval_ms / 1000,
            persist=self.state.persist if self.state else None,
        )
        deliver = self.state.delivering(self._deliver) if self.state else self._deliver
        warm = (
            functools.partial(self.state.restore, self.refresher, deliver) if self.state else None
        )
        self.sync = SyncWorker(
            self.refresher,
            deliver,
            self.metrics,
            interval=config.sync_interval_ms / 1000,
            increments_before=self.store.arrivals,
            before_first=warm,
        )
        self._health = HealthServicer(
            experimental_non_blocking=True,
            experimental_thread_pool=futures.ThreadPoolExecutor(max_workers=1),
        )
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.fanout: Fanout | None = None
        if config.fanout:
            self.fanout = Fanout(
                database_url,
                config.fanout_channel,
                self.store,
                self.metrics.fanout(),
                connected=self._fanout_connected,
                missed=self.sync.request,
                connect_timeout=config.connect_timeout,
            )
            self._fanout_connected(False)
        self._connect_timeout = config.connect_timeout
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.workers, thread_name_prefix="proca-stats-rpc"
            ),
            interceptors=self._interceptors(config),
            options=[
                # Without this, a second server on the same port would start silently.
                ("grpc.so_reuseport", 0),
                ("grpc.max_receive_message_length", config.limits.max_request_bytes),
                # Ping idle connections so that a watcher whose client vanished
                # without closing its connection is dropped, not kept forever.
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.keepalive_timeout_ms", 20_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        # A stream holds its thread for as long as it is open, so WatchStats gets a
        # pool of its own: a thread per allowed watcher, and a few to refuse the
        # ones past the limit at once. Watchers can then never take the unary
        # RPCs' threads, and their idle threads never sit in the unary pool.
        self._watch_pool = futures.ThreadPoolExecutor(
            max_workers=config.max_watchers + REFUSING_THREADS,
            thread_name_prefix="proca-stats-watch",
        )
        self.answers = Answers(
            self.store, self.watchers, self.fanout.publish if self.fanout else None
        )
        servicer = StatsServicer(self.answers)
        _run_on_pool(servicer, ANSWERED_WITH_BYTES["WatchStats"], self._watch_pool)
        add_stats_service(servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self.port = self._bind(config)
        self.metrics_port: int | None = None
        self._metrics_listen = config.metrics_listen

    def _interceptors(self, config: ServeConfig) -> list[Interceptor]:
        """Metrics outermost, so refused calls are counted too; then authentication;
        innermost, tolerant parsing for the services registered without it."""
        chain: list[Interceptor] = []
        if config.metrics_listen:
            chain.append(MetricsInterceptor(self.metrics))
        if config.tokens:
            chain.append(
                TokenAuthInterceptor(
                    config.tokens, read_methods(SERVICE), protect_reads=config.protect_reads
                )
            )
        chain.append(MalformedRequests())
        return chain

    def _bind(self, config: ServeConfig) -> int:
        try:
            if config.tls:
                port = self._grpc.add_secure_port(config.listen, server_credentials(config.tls))
            else:
                port = self._grpc.add_insecure_port(config.listen)
        except RuntimeError as error:
            raise BindError(f"cannot listen on {config.listen}: {error}") from None
        if port == 0:
            raise BindError(f"cannot listen on {config.listen}")
        return port

    def start(self) -> None:
        """Serve at once; figures come when the first calculation succeeds (or from the state
        file). With ``--change-feed logical``, a database that cannot give the feed ends the
        start with FeedError (one reachable later is set up by the sync)."""
        try:
            self.changes.check()
        except psycopg.OperationalError as error:
            log.info("change feed: checked once the database answers (%s)", str(error).strip())
        if self._metrics_listen:
            try:
                host, port = parse_listen(self._metrics_listen, "--metrics-listen")
                self.metrics_port = self.metrics.serve(host, port)
            except OSError as error:
                raise BindError(
                    f"--metrics-listen: cannot listen on {self._metrics_listen}: {error.strerror}"
                ) from None
        self._grpc.start()
        self._pool.open(wait=False)
        if self.fanout is not None:
            self.fanout.start(wait=self._connect_timeout + 1)
        self.sync.start()

    def stop(self, grace: float | None = None) -> None:
        """Say NOT_SERVING, end watch streams, let other in-flight RPCs finish within
        ``grace`` s, then stop the rest."""
        self._health.enter_graceful_shutdown()
        self.watchers.close()
        self._grpc.stop(grace).wait()
        self._watch_pool.shutdown(wait=False)
        if self.fanout is not None:
            self.fanout.stop()
        self.sync.stop()
        if self.state is not None:
            self.state.close()
        self._pool.close()
        self.metrics.close()

    def _deliver(self, snapshot: Snapshot, seen: Lookup) -> None:
        """A calculation finished: its figures replace the old ones, and the server is ready."""
        reapplied = swap_in(self.store, snapshot, seen)
        if reapplied:
            log.debug("re-applied %d increments the snapshot had not seen", reapplied)
        self._set_health(health_pb2.HealthCheckResponse.SERVING)

    def _fanout_connected(self, connected: bool) -> None:
        status = health_pb2.HealthCheckResponse
        self._health.set(FANOUT_SERVICE_NAME, status.SERVING if connected else status.NOT_SERVING)

    def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)
