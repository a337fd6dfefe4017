"""Prometheus metrics, every name prefixed `proca_stats_`, served on --metrics-listen at /metrics.

Each server gets a registry of its own, so several servers in one process (as in
the tests) never mix their figures. The port answers /metrics only: anything
else is 404, so that a probe pointed at it by mistake fails rather than passing
for a health check.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from proca_stats.server import version

# GetStats answers in well under a millisecond: the default buckets start at 5 ms.
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0)
SYNC_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Fan-out delivery is a batching window plus a database round trip: milliseconds.
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CHANGE_FEED_KINDS = ("logical", "updated-at")


class FanoutMetrics:
    """The fan-out's collectors, registered only on servers that run it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "proca_stats_fanout_connected",
            "1 while the fan-out listener is connected and listening, else 0",
            registry=registry,
        )
        self.published = Counter(
            "proca_stats_fanout_published",
            "Increments this replica published to the others",
            registry=registry,
        )
        self.received = Counter(
            "proca_stats_fanout_received",
            "Increments received from other replicas",
            registry=registry,
        )
        self.dropped = Counter(
            "proca_stats_fanout_dropped",
            "Increments that could not be published (database unreachable or queue full); "
            "the other replicas' next sync covers them",
            registry=registry,
        )
        self.held = Counter(
            "proca_stats_fanout_held",
            "Increments with an action id received from other replicas and not applied: the "
            "snapshot the figures come from saw the transaction that sent them commit, so it "
            "holds their actions already",
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "proca_stats_fanout_delivery_seconds",
            "From an Increment accepted by another replica to its being applied here "
            "(the oldest Increment of each message; clocks of different machines may differ)",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )


class Metrics:
    """The server's collectors, and the hooks that feed them."""

    def __init__(self, campaigns: Callable[[], int], serving: Callable[[], bool]) -> None:
        """``campaigns()`` counts the campaigns held; ``serving()`` is the health status."""
        # Without it every counter and histogram has a `_created` twin holding its creation
        # time: a series per label set that no alert or dashboard reads. The switch is the
        # library's, for the whole process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated upstream
        self.registry = CollectorRegistry()
        self._http: WSGIServer | None = None
        self._last_success: float | None = None
        self._lock = threading.Lock()
        # Every port's calls, told apart by ``protocol``: grpc (the gRPC port, and gRPC on
        # the HTTP port), connect or grpc-web (the HTTP port).
        self.rpcs_started = Counter(
            "proca_stats_rpcs_started",
            "RPCs received, by method and protocol, counted before the request is read: "
            "those refused before a handler runs (request too large, say) are started but "
            "not answered below",
            ["method", "protocol"],
            registry=self.registry,
        )
        self.rpcs = Counter(
            "proca_stats_rpcs",
            "RPCs answered, by method, status code and protocol (an unknown method: method "
            '"unknown", code UNIMPLEMENTED)',
            ["method", "code", "protocol"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "proca_stats_rpc_duration_seconds",
            "Time to answer a unary RPC, by method and protocol",
            ["method", "protocol"],
            buckets=RPC_BUCKETS,
            registry=self.registry,
        )
        self.sync_runs = Counter(
            "proca_stats_sync_runs",
            "Refreshes of the figures started (full calculations and incremental refreshes)",
            registry=self.registry,
        )
        self.sync_failures = Counter(
            "proca_stats_sync_failures",
            "Refreshes that failed (database unreachable, error or --sync-timeout)",
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "proca_stats_sync_duration_seconds",
            "Time a successful refresh took",
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        )
        self.late_taken_back = Counter(
            "proca_stats_late_increments_taken_back",
            "Increments with an action id counted after a swap and taken back because the "
            "snapshot of that swap already held their action (a late Increment, a retry, a "
            "fan-out message delivered after a refresh)",
            registry=self.registry,
        )
        Gauge(
            "proca_stats_seconds_since_last_sync",
            "Seconds since the last successful calculation (NaN before the first)",
            registry=self.registry,
        ).set_function(self._seconds_since_last_sync)
        Gauge(
            "proca_stats_campaigns", "Campaigns held in memory", registry=self.registry
        ).set_function(campaigns)
        Gauge(
            "proca_stats_serving",
            "1 while health says SERVING (the first calculation succeeded, not stopping), else 0",
            registry=self.registry,
        ).set_function(lambda: float(serving()))
        Info(
            "proca_stats_build", "The running proca-stats (always 1)", registry=self.registry
        ).info({"version": version()})
        self._change_feed = Gauge(
            "proca_stats_change_feed",
            "1 for the way changes are found now (logical: the replication slot; updated-at: "
            "the updated_at fallback), 0 for the other",
            ["kind"],
            registry=self.registry,
        )
        self.feed_lag = Gauge(
            "proca_stats_feed_lag_bytes",
            "WAL between the change feed's replication slot and the current position: what "
            "the slot keeps PostgreSQL from recycling (after each refresh)",
            ["slot"],
            registry=self.registry,
        )

    def change_feed(self, kind: str) -> None:
        """The change detection now in use."""
        for each in CHANGE_FEED_KINDS:
            self._change_feed.labels(each).set(1 if each == kind else 0)

    def fanout(self) -> FanoutMetrics:
        """Register the fan-out's collectors (once per server)."""
        return FanoutMetrics(self.registry)

    def sync_started(self) -> None:
        self.sync_runs.inc()

    def sync_succeeded(self, seconds: float) -> None:
        self.sync_seconds.observe(seconds)
        with self._lock:
            self._last_success = time.monotonic()

    def sync_failed(self) -> None:
        self.sync_failures.inc()

    def _seconds_since_last_sync(self) -> float:
        with self._lock:
            last = self._last_success
        return math.nan if last is None else time.monotonic() - last

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics over HTTP in a daemon thread; returns the bound port."""
        app = _only_metrics(make_wsgi_app(self.registry))
        self._http = _http_server(host.strip("[]"), port, app)
        threading.Thread(
            target=self._http.serve_forever, name="proca-stats-metrics", daemon=True
        ).start()
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _only_metrics(app: WsgiApp) -> WsgiApp:
    """``app`` at /metrics (a query string is the library's: ``name[]=`` filters), 404 elsewhere."""

    def answer(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            return app(environ, start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"not found: proca-stats serves its metrics at /metrics only\n"]

    return answer


class _Quiet(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _http_server(host: str, port: int, app: WsgiApp) -> WSGIServer:
    """A threaded HTTP server on ``host`` (IPv4 or IPv6) and ``port``."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]

    class Server(ThreadingWSGIServer):
        address_family = family

    return make_server(str(address[0]), port, app, Server, handler_class=_Quiet)
