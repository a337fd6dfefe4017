"""StatsService over HTTP with Connect, gRPC-Web and gRPC: the contract's messages in,
``Answers`` out, refusals mapped to Connect's codes (which carry gRPC's names).

connectrpc needs no generated code: the endpoints are built from the proto's
descriptor, as the gRPC registration is, so the proto says which RPCs only read
(GET allowed, open without a token unless --protect-reads), and a new RPC
without a method here fails at start, not at its first call. The kept answers
go out as the bytes they are, through this module's codecs (``Serialized``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from connectrpc.code import Code as ConnectCode
from connectrpc.errors import ConnectError
from connectrpc.method import IdempotencyLevel, MethodInfo, StreamType
from connectrpc.request import RequestContext
from connectrpc.server import ConnectASGIApplication, Endpoint
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from proca_stats.contract.v1 import stats_pb2
from proca_stats.server.api.answers import Answers, Refused, Serialized
from proca_stats.server.api.auth import Tokens, read_methods
from proca_stats.server.api.malformed import MalformedRequest
from proca_stats.server.api.web.counting import CallCount, HttpCalls
from proca_stats.server.state.watchers import LoopWakeups

SERVICE = stats_pb2.DESCRIPTOR.services_by_name["StatsService"]
READS = read_methods(SERVICE)  # full paths of the RPCs that only read

Request = TypeVar("Request")
Answer = TypeVar("Answer")
AnyMessage = TypeVar("AnyMessage", bound=Message)


def _refusing(answer: Callable[[Request], Answer], request: Request) -> Answer:
    """``answer(request)``, a refusal raised as the Connect error of the same name."""
    try:
        return answer(request)
    except Refused as refused:
        raise ConnectError(ConnectCode[refused.code.name], refused.message) from None


def _malformed(message_class: type[Message], reason: str) -> ConnectError:
    """The gRPC port's answer to bytes that are not the request message."""
    details = MalformedRequest(message_class.DESCRIPTOR.name, reason).details
    return ConnectError(ConnectCode.INVALID_ARGUMENT, details)


class BinaryCodec:
    """Protocol Buffers' binary form; a kept answer is sent as it is."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Serialized | Message) -> bytes:
        return message.binary if isinstance(message, Serialized) else message.SerializeToString()

    def decode(self, data: bytes | bytearray, message_class: type[AnyMessage]) -> AnyMessage:
        try:
            return message_class.FromString(bytes(data))
        except DecodeError as error:
            raise _malformed(message_class, str(error)) from None


class JsonCodec:
    """Protocol Buffers' JSON form, zeros included; a kept answer's JSON is made once.

    Unknown fields are ignored, as Connect's other servers do, so that a newer
    client's request still reaches an older server.
    """

    def name(self) -> str:
        return "json"

    def encode(self, message: Serialized | Message) -> bytes:
        if isinstance(message, Serialized):
            return message.json
        return json_format.MessageToJson(
            message, always_print_fields_with_no_presence=True, indent=None
        ).encode()

    def decode(self, data: bytes | bytearray, message_class: type[AnyMessage]) -> AnyMessage:
        message = message_class()
        try:
            json_format.Parse(bytes(data), message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, RecursionError) as error:
            raise _malformed(message_class, f"JSON: {error}") from None
        return message


class TokenCheck:
    """Bearer tokens, by the gRPC port's rule, checked before the body is even read
    (connectrpc runs leading metadata interceptors first)."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    async def on_start(self, ctx: RequestContext[Any, Any]) -> None:
        method = f"/{ctx.method.service_name}/{ctx.method.name}"
        if not self._tokens.allows(method, ctx.request_headers.allitems()):
            raise ConnectError(ConnectCode.UNAUTHENTICATED, Tokens.REFUSAL)

    async def on_end(
        self, token: None, ctx: RequestContext[Any, Any], error: Exception | None
    ) -> None:
        return None


class ConnectStats:
    """The RPCs as connectrpc calls them, each answered by ``Answers``.

    A read asked with GET (Connect's form for side-effect-free RPCs) is cacheable:
    it carries ``Cache-Control`` and an ``ETag`` that names the figures, so it
    changes exactly when they do (the front answers ``If-None-Match`` with 304).
    connectrpc caps the message, in the URL as in a body, at --max-request-bytes.
    """

    def __init__(self, answers: Answers, *, max_age: int, private: bool) -> None:
        """``private``: reads need a token, so shared caches must not keep them."""
        self._answers = answers
        self._cache_control = f"{'private' if private else 'public'}, max-age={max_age}"
        self._wakeups: LoopWakeups | None = None

    async def Increment(
        self, request: stats_pb2.IncrementRequest, ctx: RequestContext[Any, Any]
    ) -> stats_pb2.IncrementResponse:
        return stats_pb2.IncrementResponse(counted=_refusing(self._answers.increment, request))

    async def GetStats(
        self, request: stats_pb2.GetStatsRequest, ctx: RequestContext[Any, Any]
    ) -> Serialized:
        return self._read(self._answers.stats, request, ctx)

    async def BatchGetStats(
        self, request: stats_pb2.BatchGetStatsRequest, ctx: RequestContext[Any, Any]
    ) -> Serialized:
        return self._read(self._answers.batch_stats, request, ctx)

    async def WatchStats(
        self, request: stats_pb2.WatchStatsRequest, ctx: RequestContext[Any, Any]
    ) -> AsyncIterator[Serialized]:
        """The figures at once, then each change, waiting as a task of the server's loop;
        the place is freed however the stream ends (connectrpc closes this generator
        when the client leaves)."""
        if self._wakeups is None:
            self._wakeups = LoopWakeups(asyncio.get_running_loop())
        watching = _refusing(lambda r: self._answers.watch(r, self._wakeups), request)
        try:
            async for answer in watching.changes_async():
                yield answer
        finally:
            watching.release()

    def _read(
        self,
        answer: Callable[[Request], Serialized],
        request: Request,
        ctx: RequestContext[Any, Any],
    ) -> Serialized:
        found = _refusing(answer, request)
        if ctx.http_method != "GET":
            return found
        ctx.response_headers["cache-control"] = self._cache_control
        ctx.response_headers["etag"] = f'W/"{found.tag}"'
        return found


def _endpoints(stats: ConnectStats) -> Mapping[str, Any]:
    """Every RPC of the proto's StatsService, by path, answered by ``stats``."""
    endpoints: dict[str, Any] = {}
    for method in SERVICE.methods:
        path = f"/{SERVICE.full_name}/{method.name}"
        info: MethodInfo[Any, Any] = MethodInfo(
            name=method.name,
            service_name=SERVICE.full_name,
            input=GetMessageClass(method.input_type),
            output=GetMessageClass(method.output_type),
            idempotency_level=(
                IdempotencyLevel.NO_SIDE_EFFECTS if path in READS else IdempotencyLevel.UNKNOWN
            ),
            stream_type=StreamType.SERVER_STREAM if method.server_streaming else StreamType.UNARY,
        )
        build = Endpoint.server_stream if method.server_streaming else Endpoint.unary
        endpoints[path] = build(info, getattr(stats, method.name))
    return endpoints


class StatsApplication(ConnectASGIApplication[ConnectStats]):
    """The ASGI application of StatsService: Connect (JSON and binary, GET for reads) and
    gRPC-Web (plain gRPC, which needs trailers, is sent to the gRPC port by the front)."""

    def __init__(
        self, stats: ConnectStats, tokens: Tokens, max_request_bytes: int, calls: HttpCalls
    ) -> None:
        super().__init__(
            service=stats,
            endpoints=_endpoints,
            # Counting first, so that it sees the token check's refusals too.
            interceptors=[CallCount(calls), TokenCheck(tokens)],
            read_max_bytes=max_request_bytes,
            codecs=[BinaryCodec(), JsonCodec()],
        )

    @property
    def path(self) -> str:
        return f"/{SERVICE.full_name}"
