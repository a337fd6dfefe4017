"""OpenTelemetry traces of RPCs and sync runs, with the extra `pip install 'proca-stats[otel]'`.

Configured by OpenTelemetry's standard environment variables: tracing is on once one says
where spans go (``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) and off with ``OTEL_SDK_DISABLED=true``; the
exporters, the sampler (``OTEL_TRACES_SAMPLER``), the batching (``OTEL_BSP_*``) and the
resource (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``) read their own. Without an
exporter named, none is assumed: an OTLP exporter sending to a collector nobody runs would
only log errors.

RPCs are traced by opentelemetry-instrumentation-grpc's server interceptor, except the
streams that run apart (WatchStats on its own pool, health Watch answering later): its
rebuilt handlers would lose the marks that keep them there, and a span as long as a watch
stays open tells nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import grpc

from proca_stats.server import version
from proca_stats.server.api.handlers import Continuation, Handler, Interceptor, behavior_of
from proca_stats.server.checks import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

DESTINATIONS = (
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
)
EXPORTERS = ("otlp", "console")
SYNC_SPAN = "proca-stats sync"


class Tracing:
    """Spans of one server, through ``provider``."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("proca_stats", version())

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> Tracing | None:
        """The tracing the OTEL_* variables ask for; None when they ask for none.

        ConfigError names the variable when an exporter is unknown; with the otel extra
        missing, a warning says so and the server runs without traces.
        """
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return None
        if not any(environ.get(name) for name in DESTINATIONS):
            return None
        names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
        unknown = [n for n in names if n not in (*EXPORTERS, "none")]
        if unknown:
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} (otlp, console or none)"
            )
        wanted = [n for n in names if n != "none"]
        if not wanted:
            return None
        try:
            provider = _provider(wanted)
        except ImportError:
            log.warning(
                "OTEL_* asks for traces, but the otel extra is not installed"
                " (pip install 'proca-stats[otel]'): no traces"
            )
            return None
        return cls(provider)

    def interceptor(self) -> Interceptor:
        from opentelemetry.instrumentation.grpc import server_interceptor

        traced = server_interceptor(tracer_provider=self.provider)  # type: ignore[no-untyped-call]
        return _Traced(traced)

    @contextmanager
    def sync_span(self) -> Iterator[SyncSpan]:
        """A span around one sync run; the run tells how it ended."""
        with self._tracer.start_as_current_span(SYNC_SPAN) as span:
            yield SyncSpan(span)

    def shutdown(self) -> None:
        """Send the spans still queued, then stop."""
        self.provider.shutdown()


class SyncSpan:
    """What a sync run says about itself on its span."""

    def __init__(self, span: Span) -> None:
        self._span = span

    def succeeded(self, **attributes: str | int | float) -> None:
        self._span.set_attributes({f"proca_stats.sync.{k}": v for k, v in attributes.items()})

    def failed(self, why: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._span.set_status(Status(StatusCode.ERROR, why))


class _Traced(Interceptor):
    """instrumentation-grpc's interceptor, for every handler but those that run apart."""

    def __init__(self, traced: Any) -> None:
        self._traced = traced

    def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        behavior = behavior_of(handler)
        if getattr(behavior, "experimental_thread_pool", None) or getattr(
            behavior, "experimental_non_blocking", False
        ):
            return handler
        traced: Handler | None = self._traced.intercept_service(lambda _: handler, details)
        return traced


def _provider(exporters: list[str]) -> TracerProvider:
    """A provider sending spans to each of ``exporters``, batched."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create({SERVICE_VERSION: version()})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "proca-stats"}))
    provider = TracerProvider(resource=resource)
    for name in exporters:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider
