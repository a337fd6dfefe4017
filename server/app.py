"""A running proca-stats: its parts built, wired together, started and stopped together.

Only wiring lives here: the store and its watchers (state), the answers, the
gRPC port and the HTTP port (api), the refresher and its thread (sync), the fan-out between
replicas, and the metrics they all report to.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent import futures

import psycopg
from psycopg_pool import ConnectionPool

from proca_stats.server.api.answers import Answers
from proca_stats.server.api.auth import Tokens, read_methods
from proca_stats.server.api.grpc_server import BindError, GrpcServer
from proca_stats.server.api.grpc_service import SERVICE
from proca_stats.server.api.health import FANOUT_SERVICE, READY_SERVICES, HealthServicer
from proca_stats.server.api.web import front as web_front
from proca_stats.server.api.web.connect import ConnectStats, StatsApplication
from proca_stats.server.api.web.counting import HttpCalls
from proca_stats.server.api.web.serving import HttpServer
from proca_stats.server.checks import parse_listen
from proca_stats.server.database import connection_options
from proca_stats.server.fanout.replicas import Fanout
from proca_stats.server.metrics import Metrics
from proca_stats.server.settings import ServeConfig
from proca_stats.server.state.counters import Snapshot
from proca_stats.server.state.handover import Lookup, swap_in
from proca_stats.server.state.late import LateCheck
from proca_stats.server.state.store import Held, StatsStore
from proca_stats.server.state.watchers import Watchers
from proca_stats.server.sync.changes import UpdatedAt
from proca_stats.server.sync.detection import Detection
from proca_stats.server.sync.feed import open_feed
from proca_stats.server.sync.held import ASIDE_CONNECTIONS
from proca_stats.server.sync.keeper import StateKeeper
from proca_stats.server.sync.refresh import Refresher
from proca_stats.server.sync.snapshots import CONNECTIONS, ConnectFailures, Snapshots
from proca_stats.server.sync.worker import Deliver, SyncWorker, untraced
from proca_stats.server.tracing import Tracing

log = logging.getLogger(__name__)

POOL_CLOSE_WAIT = 0.2  # seconds a stop waits for the connection pool's threads


def delivering(
    store: StatsStore, ready: Callable[[], None], held: Callable[[], Held | None]
) -> Deliver:
    """Where the sync hands a snapshot: swapped into the store, then the server is ready.

    ``held()`` gives the same snapshot as other threads ask it after the swap (the late
    check, the fan-out); it is called before the swap, on the sync thread.
    """

    def deliver(snapshot: Snapshot, seen: Lookup) -> None:
        reapplied = swap_in(store, snapshot, seen, held())
        if reapplied:
            log.debug("re-applied %d increments the snapshot had not seen", reapplied)
        ready()

    return deliver


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


class StatsServer:
    """Everything `proca-stats serve` runs, over a database given by URL."""

    def __init__(
        self, config: ServeConfig, database_url: str, tracing: Tracing | None = None
    ) -> None:
        """``tracing``: spans of RPCs and sync runs (``Tracing.from_environment()``)."""
        self._tracing = tracing
        self.watchers = Watchers(config.max_watchers)
        # Ids forgotten past --max-action-ids: a refresh makes their actions checkable.
        self.store = StatsStore(config.limits, self.watchers, lambda: self.sync.request())
        self.health = HealthServicer(futures.ThreadPoolExecutor(max_workers=1))
        self.health.set_serving(READY_SERVICES, False)
        self.metrics = Metrics(
            campaigns=self.store.__len__, serving=lambda: self.health.serving(SERVICE.full_name)
        )
        failures = ConnectFailures()
        self._pool = ConnectionPool(
            # Calculations only read: they may use a read replica. LISTEN/NOTIFY needs the primary.
            config.sync_database_url or database_url,
            connection_class=failures.connection_class(),
            min_size=1,
            max_size=CONNECTIONS + ASIDE_CONNECTIONS,  # all a Refresher and the late check hold
            open=False,
            name="proca-stats-sync",
            # A connection broken while idle (database restarted) is replaced, not used.
            check=ConnectionPool.check_connection,
            kwargs=connection_options("proca-stats", config.connect_timeout),
        )
        self.changes = change_detection(
            config, config.sync_database_url or database_url, self.metrics
        )
        snapshots = Snapshots(
            self._pool,
            connect_timeout=config.connect_timeout,
            timeout=config.sync_timeout_ms / 1000,
            failures=failures,
        )
        # The state file's reads go through the refresher's snapshots: a stop cancels them
        # and a failed connection attempt is told with its cause, as for a refresh.
        self.state = (
            StateKeeper(config.state_dir, self.store, snapshots) if config.state_dir else None
        )
        self.refresher = Refresher(
            snapshots,
            self.changes,
            full_interval=config.full_sync_interval_ms / 1000,
            slow_interval=config.slow_sync_interval_ms / 1000,
            persist=self.state.persist if self.state else None,
        )
        ready = functools.partial(self.health.set_serving, READY_SERVICES, True)
        deliver = delivering(self.store, ready, self.refresher.held)
        warm = None
        if self.state is not None:
            # Saved figures come with no snapshot to ask: the first refresh's handover decides.
            swap = delivering(self.store, lambda: None, lambda: None)
            warm = functools.partial(self.state.restore, self.refresher, swap, ready)
            deliver = self.state.delivering(deliver)
        self.sync = SyncWorker(
            self.refresher,
            deliver,
            self.metrics,
            interval=config.sync_interval_ms / 1000,
            increments_before=self.store.arrivals,
            span=tracing.sync_span if tracing else untraced,
            before_first=warm,
        )
        self.late = LateCheck(self.store, self.metrics.late_taken_back.inc)
        self.fanout: Fanout | None = None
        if config.fanout:
            self.fanout = Fanout(
                database_url,
                config.fanout_channel,
                self.store,
                self.metrics.fanout(),
                connected=lambda on: self.health.set_serving((FANOUT_SERVICE,), on),
                missed=self.sync.request,
                connect_timeout=config.connect_timeout,
                # Transaction ids mean nothing in another database's snapshots.
                by_transaction=not config.sync_database_url,
            )
            self.health.set_serving((FANOUT_SERVICE,), False)
        self.answers = Answers(
            self.store, self.watchers, self.fanout.publish if self.fanout else None
        )
        self.tokens = Tokens(
            config.tokens, read_methods(SERVICE), protect_reads=config.protect_reads
        )
        self._grpc = GrpcServer(
            config,
            self.answers,
            self.tokens,
            self.health,
            self.metrics,
            tracing.interceptor() if tracing else None,
        )
        self.port = self._grpc.port
        self._stopping = False
        self.http = self._http(config) if config.http_listen else None
        self.metrics_port: int | None = None
        self._metrics_listen = config.metrics_listen
        self._connect_timeout = config.connect_timeout

    def _http(self, config: ServeConfig) -> HttpServer:
        """The web face, bound now, on the same answers, tokens and caps as gRPC."""
        assert config.http_listen is not None
        max_bytes = config.limits.max_request_bytes
        stats = ConnectStats(
            self.answers, max_age=config.http_max_age, private=config.protect_reads
        )
        calls = HttpCalls(self.metrics if config.metrics_listen else None, SERVICE)
        front = web_front.Front(
            StatsApplication(stats, self.tokens, max_bytes, calls),
            ready=lambda: self.store.synced_at is not None and not self._stopping,
            cors=web_front.Cors(config.cors_origins),
            max_request_bytes=max_bytes,
            timeouts=config.http_timeouts,
            calls=calls,
        )
        host, port = parse_listen(config.http_listen, "--http-listen")
        try:
            return HttpServer(front, host, port, config.tls, config.http_timeouts)
        except OSError as error:
            raise BindError(
                f"--http-listen: cannot listen on {config.http_listen}: {error.strerror}"
            ) from None

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
        if self.http is not None:
            self.http.start()
        self._pool.open(wait=False)
        if self.fanout is not None:
            self.fanout.start(wait=self._connect_timeout + 1)
        self.late.start()
        self.sync.start()

    def stop(self, grace: float | None = None) -> None:
        """Say NOT_SERVING, end watch streams, let other in-flight RPCs finish within
        ``grace`` s, then stop the rest."""
        self._stopping = True
        self.health.enter_graceful_shutdown()
        self.watchers.close()
        if self.http is not None:
            self.http.shutdown(grace)
        self._grpc.stop(grace)
        if self.http is not None:
            self.http.join()
        if self.fanout is not None:
            self.fanout.stop()
        self.late.stop()
        self.sync.stop()
        if self.state is not None:
            self.state.close()
        # Its threads may be stuck connecting to a database that does not answer (they give
        # up at connect_timeout); they are daemons, and nothing waits for what they bring.
        self._pool.close(timeout=POOL_CLOSE_WAIT)
        self.metrics.close()
        if self._tracing is not None:
            self._tracing.shutdown()
