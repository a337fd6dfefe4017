"""StatsService over gRPC: the contract's messages in, ``Answers`` out, statuses mapped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message_factory import GetMessageClass

from proca_stats.contract.v1 import stats_pb2, stats_pb2_grpc
from proca_stats.server.api.answers import Answers, Refused
from proca_stats.server.api.malformed import MalformedRequest, TolerantParser, refuse

SERVICE = stats_pb2.DESCRIPTOR.services_by_name["StatsService"]

Request = TypeVar("Request")
Answer = TypeVar("Answer")
# RPCs registered with the servicer method that answers serialized messages.
ANSWERED_WITH_BYTES = {
    "GetStats": "serialized_stats",
    "BatchGetStats": "serialized_batch",
    "WatchStats": "serialized_watch",
}


def _abort(context: grpc.ServicerContext, refused: Refused) -> NoReturn:
    context.abort(grpc.StatusCode[refused.code.name], refused.message)
    raise AssertionError("context.abort always raises")  # pragma: no cover


def _answer(
    answer: Callable[[Request], Answer],
    request: Request | MalformedRequest,
    context: grpc.ServicerContext,
) -> Answer:
    """``answer(request)``, or the RPC ends with the status it was refused with."""
    if isinstance(request, MalformedRequest):
        refuse(context, request)
    try:
        return answer(request)
    except Refused as refused:
        _abort(context, refused)


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    """The counters RPCs over gRPC, answered by ``Answers``.

    ``add_stats_service`` registers the ``serialized_*`` methods, which send the
    answers' kept bytes; ``GetStats``, ``BatchGetStats`` and ``WatchStats`` give
    the same answers as messages.
    """

    def __init__(self, answers: Answers) -> None:
        self._answers = answers

    def Increment(
        self,
        request: stats_pb2.IncrementRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.IncrementResponse:
        return stats_pb2.IncrementResponse(
            counted=_answer(self._answers.increment, request, context)
        )

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
        return _answer(self._answers.stats, request, context).binary

    def BatchGetStats(
        self,
        request: stats_pb2.BatchGetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.BatchGetStatsResponse:
        return stats_pb2.BatchGetStatsResponse.FromString(self.serialized_batch(request, context))

    def serialized_batch(
        self,
        request: stats_pb2.BatchGetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> bytes:
        """BatchGetStats, answered with the serialized BatchGetStatsResponse."""
        return _answer(self._answers.batch_stats, request, context).binary

    def serialized_watch(
        self,
        request: stats_pb2.WatchStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """WatchStats, answered with serialized WatchStatsResponses."""
        watching = _answer(self._answers.watch, request, context)
        # Released when the RPC ends for any reason: gRPC stops pulling from a
        # cancelled stream's generator without closing it, so `finally` alone
        # would free the place only when the generator is collected.
        if not context.add_callback(watching.release):
            watching.release()
            return
        try:
            for answer in watching.changes(context.is_active):
                yield answer.binary
        finally:
            watching.release()


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
