"""StatsService: request → validation → store → response, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from proca_stats.client.v1 import stats_pb2, stats_pb2_grpc

from .messages import campaign_stats
from .store import CapacityError, StatsStore
from .validation import ValidationError, campaign_id_from, increment_from

SERVICE = stats_pb2.DESCRIPTOR.services_by_name["StatsService"]

Request = TypeVar("Request")
Valid = TypeVar("Valid")


@dataclass(frozen=True)
class MalformedRequest:
    """Bytes that are not the expected message (not protobuf, or strings not UTF-8)."""

    message_type: str
    reason: str


def _validated(
    validate: Callable[[Request], Valid],
    request: Request | MalformedRequest,
    context: grpc.ServicerContext,
) -> Valid:
    """The request's valid content, or the RPC ends with INVALID_ARGUMENT naming the field."""
    if isinstance(request, MalformedRequest):
        _abort(
            context,
            grpc.StatusCode.INVALID_ARGUMENT,
            f"request: not a valid {request.message_type} ({request.reason})",
        )
    try:
        return validate(request)
    except ValidationError as error:
        _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error))


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, details: str) -> NoReturn:
    context.abort(code, details)
    raise AssertionError("context.abort always raises")  # pragma: no cover


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    """The counters RPCs, answered from the store without touching the database."""

    def __init__(self, store: StatsStore) -> None:
        self._store = store

    def Increment(
        self,
        request: stats_pb2.IncrementRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.IncrementResponse:
        increment = _validated(increment_from, request, context)
        try:
            self._store.increment(increment)
        except CapacityError as error:
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return stats_pb2.IncrementResponse()

    def GetStats(
        self,
        request: stats_pb2.GetStatsRequest | MalformedRequest,
        context: grpc.ServicerContext,
    ) -> stats_pb2.GetStatsResponse:
        campaign_id = _validated(campaign_id_from, request, context)
        counters, synced_at = self._store.get(campaign_id)
        if synced_at is None:
            _abort(
                context,
                grpc.StatusCode.UNAVAILABLE,
                "stats are not ready: the first calculation has not succeeded yet",
            )
        return stats_pb2.GetStatsResponse(stats=campaign_stats(campaign_id, counters, synced_at))


def _tolerant_parser(message_class: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that never raises.

    grpc answers INTERNAL when a deserializer raises; bad bytes are the
    caller's mistake, so they reach validation and get INVALID_ARGUMENT.
    """

    def parse(data: bytes) -> Message | MalformedRequest:
        try:
            return message_class.FromString(data)
        except DecodeError as error:
            return MalformedRequest(message_class.DESCRIPTOR.name, str(error))

    return parse


def add_stats_service(servicer: StatsServicer, server: grpc.Server) -> None:
    """Register every RPC of the proto's StatsService with tolerant request parsing.

    Used instead of the generated ``add_StatsServiceServicer_to_server``, which
    lets a malformed request end in INTERNAL.
    """
    handlers = {}
    for method in SERVICE.methods:
        build = (
            grpc.unary_stream_rpc_method_handler
            if method.server_streaming
            else grpc.unary_unary_rpc_method_handler
        )
        handlers[method.name] = build(
            getattr(servicer, method.name),
            request_deserializer=_tolerant_parser(GetMessageClass(method.input_type)),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(  # type: ignore[attr-defined]  # stubs lag grpcio
        SERVICE.full_name, handlers
    )
