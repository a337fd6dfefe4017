"""A typed Python client of StatsService, thin over the generated stubs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.contract.v1.stats_pb2 import CampaignStats

from .errors import error_from
from .retry import DEFAULT_RETRY, Retry
from .watch import StatsWatch

DEFAULT_TARGET = "127.0.0.1:50051"

Request = TypeVar("Request")
Response = TypeVar("Response")


class StatsClient:
    """Calls one proca-stats server; every call has a deadline and raises a StatsError subclass.

    >>> with StatsClient("127.0.0.1:50051") as stats:
    ...     stats.increment(campaign_id=1, org_id=2, action_type="signature", new_supporter=True)
    ...     stats.get_stats(1).supporters
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        timeout: float = 5.0,
        credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        retry: Retry | None = DEFAULT_RETRY,
        channel: grpc.Channel | None = None,
    ) -> None:
        """Connect to ``target``.

        ``timeout`` is each call's deadline in seconds, retries included.
        ``credentials`` (from ``grpc.ssl_channel_credentials``) turn on TLS;
        ``token`` is sent as ``authorization: Bearer <token>`` with every call.
        ``retry`` is how reads and Increments that carry an ``action_id`` are
        retried when they end UNAVAILABLE (None: never); an Increment without
        one is never retried, since its first attempt may have counted.
        ``channel`` replaces the channels the client would open (for custom
        options): every call then goes out on it, with its own retry policy.
        """
        # Increments without action_id go out on a channel without retries, opened at the
        # first of them; on a channel given, every call goes out on that channel.
        self._open_once_only: Callable[[], grpc.Channel] | None = None
        if channel is None:
            channel = _open_channel(target, credentials, retry)
            self._open_once_only = partial(_open_channel, target, credentials, None)
        self._channel = channel
        self._stub = stats_pb2_grpc.StatsServiceStub(channel)
        self._once_only: tuple[grpc.Channel, stats_pb2_grpc.StatsServiceStub] | None = None
        self._lock = threading.Lock()
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    def get_stats(self, campaign_id: int, *, timeout: float | None = None) -> CampaignStats:
        """The campaign's counters; an unknown campaign has zeros."""
        request = stats_pb2.GetStatsRequest(campaign_id=campaign_id)
        return self._call(self._stub.GetStats, request, timeout).stats

    def batch_get_stats(
        self, campaign_ids: Iterable[int], *, timeout: float | None = None
    ) -> list[CampaignStats]:
        """The counters of 1..1000 campaigns, one entry per id in the order given."""
        request = stats_pb2.BatchGetStatsRequest(campaign_ids=campaign_ids)
        return list(self._call(self._stub.BatchGetStats, request, timeout).stats)

    def watch_stats(
        self, campaign_id: int, *, min_interval_ms: int = 0, timeout: float | None = None
    ) -> StatsWatch:
        """The campaign's counters now, then whenever they change, at most once per
        ``min_interval_ms`` (0: the server's default of 1000, else at least 100).

        The stream has no deadline unless ``timeout`` (seconds) is given: it is
        meant to stay open for as long as a page shows the counter.
        """
        request = stats_pb2.WatchStatsRequest(
            campaign_id=campaign_id, min_interval_ms=min_interval_ms
        )
        return StatsWatch(self._stub.WatchStats(request, timeout=timeout, metadata=self._metadata))

    def increment(
        self,
        campaign_id: int,
        org_id: int,
        action_type: str,
        *,
        area: str | None = None,
        new_supporter: bool = False,
        action_id: int | None = None,
        timeout: float | None = None,
    ) -> bool:
        """Record one accepted action; ``new_supporter`` when it created the supporter.

        Returns whether it counted: False when its ``action_id`` had been counted
        already (by an earlier call, or by an attempt of this one whose answer was
        lost and that was retried). Pass the stored action's ``action_id`` to make
        the call safe to retry and to keep it across a recalculation that was running.
        """
        request = stats_pb2.IncrementRequest(
            campaign_id=campaign_id,
            org_id=org_id,
            action_type=action_type,
            area=area,
            new_supporter=new_supporter,
            action_id=action_id,
        )
        stub = self._stub if action_id is not None else self._once_only_stub()
        return self._call(stub.Increment, request, timeout).counted

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's health status, by its name in grpc.health.v1: ``SERVING`` once the
        first calculation has succeeded, ``NOT_SERVING`` before and while stopping. ``service``
        "" is the server overall; NotFound for a name it does not know."""
        stub = health_pb2_grpc.HealthStub(self._channel)
        request = health_pb2.HealthCheckRequest(service=service)
        reply = self._call(stub.Check, request, timeout)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def _once_only_stub(self) -> stats_pb2_grpc.StatsServiceStub:
        if self._open_once_only is None:
            return self._stub
        with self._lock:  # one channel, however many threads make their first such call
            if self._once_only is None:
                channel = self._open_once_only()
                self._once_only = (channel, stats_pb2_grpc.StatsServiceStub(channel))
            return self._once_only[1]

    def _call(
        self,
        rpc: grpc.UnaryUnaryMultiCallable[Request, Response],
        request: Request,
        timeout: float | None,
    ) -> Response:
        try:
            return rpc(
                request,
                timeout=self._timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            raise error_from(error) from None

    def close(self) -> None:
        self._channel.close()
        if self._once_only is not None:
            self._once_only[0].close()

    def __enter__(self) -> StatsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _open_channel(
    target: str, credentials: grpc.ChannelCredentials | None, retry: Retry | None
) -> grpc.Channel:
    """A channel to ``target`` whose calls gRPC retries by ``retry`` (None: never)."""
    options = [("grpc.service_config", retry.service_config())] if retry else []
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options)
    return grpc.insecure_channel(target, options)
