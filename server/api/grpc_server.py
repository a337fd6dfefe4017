"""The gRPC port: StatsService, health and reflection behind the interceptors, on their pools."""

from __future__ import annotations

import functools
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from proca_stats.server.api.answers import Answers
from proca_stats.server.api.auth import TokenAuthInterceptor, Tokens
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
from proca_stats.server.metrics import Metrics
from proca_stats.server.settings import ServeConfig

REFUSING_THREADS = 4  # WatchStats threads beyond the limit, to answer RESOURCE_EXHAUSTED


class BindError(RuntimeError):
    """The listen address cannot be used (port in use, unknown host, no permission)."""


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


def _interceptors(
    config: ServeConfig, tokens: Tokens, metrics: Metrics, tracing: Interceptor | None
) -> list[Interceptor]:
    """Metrics outermost, so refused calls are counted too; tracing, so they are traced
    too; then authentication; innermost, tolerant parsing for the services registered
    without it."""
    chain: list[Interceptor] = []
    if config.metrics_listen:
        chain.append(MetricsInterceptor(metrics))
    if tracing is not None:
        chain.append(tracing)
    if config.tokens:
        chain.append(TokenAuthInterceptor(tokens))
    chain.append(MalformedRequests())
    return chain


class GrpcServer:
    """StatsService, health and reflection on ``config.listen``, bound at construction."""

    def __init__(
        self,
        config: ServeConfig,
        answers: Answers,
        tokens: Tokens,
        health_servicer: HealthServicer,
        metrics: Metrics,
        tracing: Interceptor | None = None,
    ) -> None:
        """``tracing`` traces the RPCs (tracing.py)."""
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=config.workers, thread_name_prefix="proca-stats-rpc"
            ),
            interceptors=_interceptors(config, tokens, metrics, tracing),
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
        servicer = StatsServicer(answers)
        _run_on_pool(servicer, ANSWERED_WITH_BYTES["WatchStats"], self._watch_pool)
        add_stats_service(servicer, self._grpc)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        self.port = self._bind(config)

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
        self._grpc.start()

    def stop(self, grace: float | None) -> None:
        """Refuse new RPCs, let in-flight ones finish within ``grace`` s, then cut them."""
        self._grpc.stop(grace).wait()
        self._watch_pool.shutdown(wait=False)
