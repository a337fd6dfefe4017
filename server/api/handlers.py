"""Rebuilding a gRPC method handler around a new behaviour, whatever its kind.

Interceptors (authentication, metrics) replace a handler's behaviour but must
keep its kind and (de)serializers; grpc offers one constructor per kind, so the
choice is made here once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation = Callable[[grpc.HandlerCallDetails], "Handler | None"]

if TYPE_CHECKING:  # generic in the type stubs only
    Interceptor: TypeAlias = grpc.ServerInterceptor[Any, Any]
else:
    Interceptor = grpc.ServerInterceptor


def behavior_of(handler: Handler) -> Behavior:
    """The function that answers the call, whichever of the four kinds it is."""
    for behavior in (
        handler.unary_unary,
        handler.unary_stream,
        handler.stream_unary,
        handler.stream_stream,
    ):
        if behavior is not None:
            return behavior
    raise ValueError("a method handler without behaviour")


def with_behavior(
    handler: Handler,
    behavior: Behavior,
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
    forwards_callback: bool = False,
) -> Handler:
    """A handler of the same kind and serialization as ``handler`` that runs ``behavior``.

    ``request_deserializer`` replaces the handler's own when given.
    ``forwards_callback`` says that ``behavior`` passes grpc's
    send_response_callback on to the original, so an original marked
    non-blocking (grpc's health Watch) stays non-blocking; otherwise grpc
    calls ``behavior`` without one.
    """
    if handler.unary_unary:
        build = grpc.unary_unary_rpc_method_handler
    elif handler.unary_stream:
        build = grpc.unary_stream_rpc_method_handler
    elif handler.stream_unary:
        build = grpc.stream_unary_rpc_method_handler
    else:
        build = grpc.stream_stream_rpc_method_handler
    original = behavior_of(handler)
    kept: dict[str, object] = {}
    pool = getattr(original, "experimental_thread_pool", None)
    if pool is not None:  # the RPC runs on a pool of its own (WatchStats): keep it there
        kept["experimental_thread_pool"] = pool
    if forwards_callback and getattr(original, "experimental_non_blocking", False):
        kept["experimental_non_blocking"] = True
    if kept:  # on a copy: ``behavior`` may be shared by several handlers
        behavior = functools.partial(behavior)
        behavior.__dict__.update(kept)
    return build(
        behavior,
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
