"""Requests that are not the message their RPC expects get INVALID_ARGUMENT, on every service.

When a request deserializer raises, grpc answers INTERNAL and logs a
traceback at ERROR, as if the server were broken; bad bytes are the caller's
mistake. A deserializer cannot choose the status, so a tolerant one hands the
behaviour a MalformedRequest instead and the behaviour ends the RPC.
StatsService is registered with tolerant parsers and validates
MalformedRequests with its other rules (grpc_service.py); ``MalformedRequests``
gives every other registered service (health, reflection) the same answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import DecodeError

from proca_stats.server.api.handlers import (
    Behavior,
    Continuation,
    Handler,
    Interceptor,
    behavior_of,
    with_behavior,
)


@dataclass(frozen=True)
class MalformedRequest:
    """Bytes that are not the expected message (not protobuf, or strings not UTF-8)."""

    message_type: str
    reason: str

    @property
    def details(self) -> str:
        """The INVALID_ARGUMENT message: which message the bytes failed to be, and why."""
        return f"request: not a valid {self.message_type} ({self.reason})"


class TolerantParser:
    """A request deserializer that returns a MalformedRequest where the original raises."""

    def __init__(self, parse: Callable[[bytes], Any], message_type: str) -> None:
        self._parse = parse
        self._message_type = message_type

    def __call__(self, data: bytes) -> Any:
        try:
            return self._parse(data)
        except DecodeError as error:
            return MalformedRequest(self._message_type, str(error))


def refuse(context: grpc.ServicerContext, request: MalformedRequest) -> NoReturn:
    """End the RPC with INVALID_ARGUMENT naming the message the request failed to be."""
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.details)
    raise AssertionError("context.abort always raises")  # pragma: no cover


def _request_type(method: str) -> str:
    """The request message's name of ``/package.Service/Method``, from the protos grpc loaded."""
    try:
        found = descriptor_pool.Default().FindMethodByName(method.lstrip("/").replace("/", "."))
    except KeyError:
        return f"request of {method}"
    return str(found.input_type.name)


def _checked_requests(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, MalformedRequest):
            refuse(context, request)
        yield request


# grpc gives a non-blocking behaviour (health Watch) a send_response_callback:
# ``*callback`` passes it on, so the handler stays non-blocking.


def _checking_stream(behavior: Behavior) -> Behavior:
    def checked(requests: Iterator[Any], context: grpc.ServicerContext, *callback: Any) -> Any:
        return behavior(_checked_requests(requests, context), context, *callback)

    return checked


def _checking_one(behavior: Behavior) -> Behavior:
    def checked(request: Any, context: grpc.ServicerContext, *callback: Any) -> Any:
        if isinstance(request, MalformedRequest):
            refuse(context, request)
        return behavior(request, context, *callback)

    return checked


def _tolerant(handler: Handler, parse: Callable[[bytes], Any], method: str) -> Handler:
    """``handler`` parsing with a tolerant ``parse``, refusing what it could not parse."""
    checking = _checking_stream if handler.request_streaming else _checking_one
    return with_behavior(
        handler,
        checking(behavior_of(handler)),
        request_deserializer=TolerantParser(parse, _request_type(method)),
        forwards_callback=True,
    )


class MalformedRequests(Interceptor):
    """Gives every handler whose request deserializer may raise a tolerant one.

    It must come last in the chain, next to the handlers, so that the other
    interceptors' handlers keep its parser. StatsService's handlers, tolerant
    already, pass as they are; the others are rebuilt once per method and kept.
    """

    def __init__(self) -> None:
        self._rebuilt: dict[str, tuple[Handler, Handler]] = {}

    def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(details)
        parse = handler.request_deserializer if handler is not None else None
        if handler is None or parse is None or isinstance(parse, TolerantParser):
            return handler
        kept = self._rebuilt.get(details.method)
        if kept is None or kept[0] is not handler:
            kept = (handler, _tolerant(handler, parse, details.method))
            self._rebuilt[details.method] = kept  # a race only rebuilds it twice
        return kept[1]
