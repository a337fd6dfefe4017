"""Bearer tokens: who may change the counters (and, with --protect-reads, read them).

Tokens come from a file, one per line, so they can be rotated by editing the
file and restarting, and never appear on a command line or in the environment.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from proca_stats.server.api.handlers import Continuation, Handler, Interceptor, with_behavior
from proca_stats.server.checks import ConfigError

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.")


def load_tokens(path: Path) -> tuple[bytes, ...]:
    """The tokens in ``path``: one per line; blank lines and lines starting with # are skipped.

    A token must be printable ASCII: it travels in a gRPC metadata value, so a
    token with any other byte could never be presented (and a comment may still
    hold any text).
    """
    try:
        lines = path.read_bytes().splitlines()
    except OSError as error:
        raise ConfigError(f"--token-file: cannot read {path}: {error.strerror}") from None
    tokens: list[bytes] = []
    for number, line in enumerate(lines, start=1):
        token = line.strip()
        if not token or line.startswith(b"#"):
            continue
        if not all(0x20 <= byte < 0x7F for byte in token):
            raise ConfigError(
                f"--token-file: {path} line {number}: a token must be printable ASCII "
                "(it is sent as gRPC metadata)"
            )
        tokens.append(token)
    if not tokens:
        raise ConfigError(f"--token-file: {path} holds no token")
    return tuple(tokens)


def presented_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    """The token of a call's `authorization: Bearer <token>` metadata (or HTTP header), if
    it has one.

    The scheme is matched without regard to case, as RFC 7235 says of
    authentication schemes, so `bearer` and `BEARER` clients are not refused.
    """
    presented = next((v for k, v in metadata or () if k.lower() == "authorization"), None)
    if not isinstance(presented, str):
        return None
    scheme, _, token = presented.partition(" ")
    return token.encode() if scheme.lower() == "bearer" else None


def read_methods(service: ServiceDescriptor) -> frozenset[str]:
    """Full names of the service's RPCs marked `idempotency_level = NO_SIDE_EFFECTS` in the proto.

    The proto is the contract, so it also says which RPCs only read: a new RPC
    that changes state needs a token without anyone remembering to list it.
    """
    no_side_effects = 1  # MethodOptions.NO_SIDE_EFFECTS

    def is_read(method: MethodDescriptor) -> bool:
        return bool(method.GetOptions().idempotency_level == no_side_effects)

    return frozenset(f"/{service.full_name}/{m.name}" for m in service.methods if is_read(m))


class Tokens:
    """Who may call what: the rule of every face (gRPC metadata and HTTP headers alike).

    Health always stays open: load balancers and orchestrators probe it
    without credentials, and it tells nothing but up or down.
    """

    REFUSAL = "this call needs metadata `authorization: Bearer <token>` with a valid token"

    def __init__(
        self, tokens: Iterable[bytes], reads: frozenset[str], *, protect_reads: bool
    ) -> None:
        self._tokens = tuple(tokens)
        self._reads = reads
        self._protect_reads = protect_reads

    def allows(self, method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        """Whether a call of ``method`` (its full path) with this metadata may go on."""
        return not self._tokens or self._is_open(method) or self._authorized(metadata)

    def _is_open(self, method: str) -> bool:
        if method.startswith(HEALTH_PREFIX):
            return True
        if self._protect_reads:
            return False
        return method in self._reads or method.startswith(REFLECTION_PREFIXES)

    def _authorized(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> bool:
        candidate = presented_token(metadata)
        if candidate is None:
            return False
        matched = False
        for token in self._tokens:  # every token is compared: timing tells nothing
            matched |= hmac.compare_digest(candidate, token)
        return matched


class TokenAuthInterceptor(Interceptor):
    """Refuses gRPC calls that ``Tokens`` does not allow with UNAUTHENTICATED."""

    def __init__(self, tokens: Tokens) -> None:
        self._tokens = tokens

    def intercept_service(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None or self._tokens.allows(details.method, details.invocation_metadata):
            return handler

        def refuse(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, Tokens.REFUSAL)

        return with_behavior(handler, refuse)
