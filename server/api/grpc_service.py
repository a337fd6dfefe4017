"""StatsService: request → validation → store → response, nothing else."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message_factory import GetMessageClass

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.malformed import MalformedRequest, TolerantParser, refuse
from proca_stats.server.api.messages import campaign_stats
from proca_stats.server.state.counters import NO_COUNTERS, CampaignCounters, Increment
from proca_stats.server.state.store import CapacityError, StatsStore
from proca_stats.server.state.validation import (
    ValidationError,
    Watch,
    campaign_id_from,
    campaign_ids_from,
    increment_from,
    watch_from,
)
from proca_stats.server.state.watchers import Watcher, Watchers, WatchersClosed, WatchersFull

SERVICE = stats_pb2.DESCRIPTOR.services_by_name["StatsService"]

Request = TypeVar("Request")
Valid = TypeVar("Valid")
Figures = tuple[CampaignCounters, datetime | None]

# How long a watcher waits for a change before it checks that its client is
# still there. The RPC's termination callback normally ends the wait at once;
# this only bounds how long a missed one could hold a watcher's place.
WATCH_LIVENESS_CHECK = 10.0
# RPCs registered with the servicer method that answers serialized messages.
ANSWERED_WITH_BYTES = {"GetStats": "serialized_stats", "WatchStats": "serialized_watch"}


def _validated(
    validate: Callable[[Request], Valid],
    request: Request | MalformedRequest,
    context: grpc.ServicerContext,
) -> Valid:
    """The request's valid content, or the RPC ends with INVALID_ARGUMENT naming the field."""
    if isinstance(request, MalformedRequest):
        refuse(context, request)
    try:
        return validate(request)
    except ValidationError as error:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _ready(synced_at: datetime | None, context: grpc.ServicerContext) -> datetime:
    """The snapshot time, or the RPC ends with UNAVAILABLE before the first calculation."""
    if synced_at is None:
        _abort(
            context,
            grpc.StatusCode.UNAVAILABLE,
            "stats are not ready: the first calculation has not succeeded yet",
        )
    return synced_at


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("context.abort always raises")  # pragma: no cover


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    """The counters RPCs, answered from the store without touching the database.

    GetStats is the hot path: its serialized answer is kept per campaign and
    reused while the campaign's counters and snapshot are the very same
    objects (counters are immutable and replaced on every change), so most
    reads cost a lookup and no message building. WatchStats sends the same
    bytes: a WatchStatsResponse is, on the wire, a GetStatsResponse (both hold
    the CampaignStats in field 1), so ten watchers of a campaign and its
    readers share one serialization. ``add_stats_service`` registers
    ``serialized_stats`` and ``serialized_watch``; ``GetStats`` and
    ``WatchStats`` give the same answers as messages.
    """

    def __init__(
        self,
        store: StatsStore,
        watchers: Watchers,
        counted: Callable[[Increment], None] | None = None,
    ) -> None:
        """``counted`` is told each Increment the store counted (the fan-out publishes it)."""
        self._store = store
        self._watchers = watchers
        self._counted = counted
        # campaign id → (counters, serialized GetStatsResponse), known campaigns of the
        # snapshot ``_answers_of`` only: emptied when a new one is swapped in, so that it
        # never holds more campaigns than the store does.
        self._answers: dict[int, tuple[CampaignCounters, bytes]] = {}
        self._answers_of: datetime | None = None

    def Increment(
        self,
        request: stats_pb2.IncrementRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.IncrementResponse:
        increment = _validated(increment_from, request, context)
        try:
            counted = self._store.increment(increment)
        except CapacityError as error:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        if counted and self._counted is not None:
            self._counted(increment)
        return stats_pb2.IncrementResponse()

    def GetStats(
        self,
        request: stats_pb2.GetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.GetStatsResponse:
        return stats_pb2.GetStatsResponse.FromString(self.serialized_stats(request, context))

    def WatchStats(
        self,
        request: stats_pb2.WatchStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> Iterator[stats_pb2.WatchStatsResponse]:
        for answer in self.serialized_watch(request, context):
            yield stats_pb2.WatchStatsResponse.FromString(answer)

    def serialized_stats(
        self,
        request: stats_pb2.GetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> bytes:
        """GetStats, answered with the serialized GetStatsResponse."""
        campaign_id = _validated(campaign_id_from, request, context)
        counters, synced_at = self._store.get(campaign_id)
        synced_at = _ready(synced_at, context)
        return self._answer(campaign_id, counters, synced_at)

    def _answer(
        self, campaign_id: int, counters: CampaignCounters, synced_at: datetime | None
    ) -> bytes:
        """The serialized GetStatsResponse for these figures, built once per change."""
        answers = self._answers
        if synced_at is not self._answers_of:
            # A new snapshot (or, from a thread that read the store before the swap,
            # an old one): start afresh. Threads that race here only rebuild answers.
            answers = self._answers = {}
            self._answers_of = synced_at
        kept = answers.get(campaign_id)
        if kept is not None and kept[0] is counters:
            return kept[1]
        answer = stats_pb2.GetStatsResponse(
            stats=campaign_stats(campaign_id, counters, synced_at)
        ).SerializeToString()
        if counters is not NO_COUNTERS:  # unknown campaigns are not kept: ids are unbounded
            answers[campaign_id] = (counters, answer)
        return answer

    def BatchGetStats(
        self,
        request: stats_pb2.BatchGetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.BatchGetStatsResponse:
        campaign_ids = _validated(campaign_ids_from, request, context)
        found, synced_at = self._store.get_many(campaign_ids)
        _ready(synced_at, context)
        return stats_pb2.BatchGetStatsResponse(
            stats=[
                campaign_stats(campaign_id, counters, synced_at)
                for campaign_id, counters in zip(campaign_ids, found, strict=True)
            ]
        )

    def serialized_watch(
        self,
        request: stats_pb2.WatchStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """WatchStats, answered with serialized WatchStatsResponses."""
        watch = _validated(watch_from, request, context)
        _ready(self._store.synced_at, context)
        try:
            watcher = self._watchers.open(watch.campaign_id)
        except WatchersFull as error:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except WatchersClosed as error:
            _abort(context, grpc.StatusCode.UNAVAILABLE, str(error))
        # Released when the RPC ends for any reason: gRPC stops pulling from a
        # cancelled stream's generator without closing it, so `finally` alone
        # would free the place only when the generator is collected.
        if not context.add_callback(lambda: self._watchers.release(watcher)):
            self._watchers.release(watcher)
            return
        try:
            yield from self._changes(watch, watcher, context)
        finally:
            self._watchers.release(watcher)

    def _changes(
        self, watch: Watch, watcher: Watcher, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """The current figures, then the latest ones after each change, at most once per interval.

        The watcher was opened before the first read, so a change between the
        two is never lost; it may only cause a re-read that finds nothing new.
        """
        latest: Figures | None = self._store.get(watch.campaign_id)
        while latest is not None:
            counters, synced_at = latest
            not_before = time.monotonic() + watch.min_interval
            yield self._answer(watch.campaign_id, counters, synced_at)
            latest = self._next_change(watch.campaign_id, counters, watcher, not_before, context)

    def _next_change(
        self,
        campaign_id: int,
        sent: CampaignCounters,
        watcher: Watcher,
        not_before: float,
        context: grpc.ServicerContext,
    ) -> Figures | None:
        """The campaign's figures once they differ from ``sent`` and ``not_before`` has
        passed; None when the stream is to end (client gone or server stopping)."""
        while True:
            changed = watcher.wait(not_before, WATCH_LIVENESS_CHECK)
            if watcher.closed or not context.is_active():
                return None
            if changed:
                figures = self._store.get(campaign_id)
                if figures[0] != sent:  # a sync that confirmed the figures sends nothing
                    return figures


def add_stats_service(servicer: StatsServicer, server: grpc.Server) -> None:
    """Register every RPC of the proto's StatsService with tolerant request parsing.

    Used instead of the generated ``add_StatsServiceServicer_to_server``, which
    lets a malformed request end in INTERNAL; GetStats and WatchStats are
    registered with the servicer's kept serialized answers.
    """
    handlers = {}
    for method in SERVICE.methods:
        build = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        serialize: Callable[[Any], bytes] | None = GetMessageClass(
            method.output_type
        ).SerializeToString
        behavior = getattr(servicer, method.name)
        if method.name in ANSWERED_WITH_BYTES:  # no serializer: the bytes are sent as they are
            behavior, serialize = getattr(servicer, ANSWERED_WITH_BYTES[method.name]), None
        request = GetMessageClass(method.input_type)
        handlers[method.name] = build(
            behavior,
            request_deserializer=TolerantParser(request.FromString, request.DESCRIPTOR.name),
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # stubs lag grpcio
        SERVICE.full_name, handlers
    )
