"""OpenTelemetry traces: one trace id from the CLI through the server and nodes.

Off unless ``AETHER_OTLP_ENDPOINT`` is set in a process's environment: then that
process (CLI, server or node) sends its spans to ``{endpoint}/v1/traces`` over
OTLP/HTTP, and every HTTP request it makes carries the W3C ``traceparent`` of the
span it is made in. Off, nothing of OpenTelemetry is imported (the CLI starts as
fast as before) and every function here does nothing.

A trace crosses processes in two ways: a request's ``traceparent`` header (CLI →
server, server → leader), and records that carry one (a blueprint carries its
deployment's, an instance record the blueprint's), so work done later by another
process — the leader placing, a node loading — joins the trace of the request
that asked for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

__all__ = [
    "ENDPOINT_ENV",
    "TRACEPARENT_ENV",
    "annotate",
    "configure",
    "enabled",
    "inject",
    "record",
    "shutdown",
    "span",
    "trace_id",
    "traceparent",
]

ENDPOINT_ENV = "AETHER_OTLP_ENDPOINT"
TRACEPARENT_ENV = "TRACEPARENT"  # how a sandboxed command is given its parent span

Kind = Literal["internal", "server", "client", "consumer", "producer"]

_provider: TracerProvider | None = None


def enabled() -> bool:
    return _provider is not None


def configure(service: str, endpoint: str | None = None) -> bool:
    """Send this process's spans to the OTLP endpoint (``AETHER_OTLP_ENDPOINT`` by
    default) as ``service``; whether tracing is on. Idempotent."""
    global _provider
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV, "").strip()
    if not endpoint:
        return False
    if _provider is not None:
        return True
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    url = endpoint.rstrip("/")
    if not url.endswith("/v1/traces"):
        url += "/v1/traces"
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=url, timeout=5), schedule_delay_millis=500)
    )
    trace.set_tracer_provider(provider)
    _provider = provider
    for handler in logging.getLogger().handlers:
        handler.addFilter(_TraceIdFilter())
    return True


def shutdown() -> None:
    """Send what is buffered and stop (the CLI, before it exits)."""
    global _provider
    if _provider is not None:
        _provider.force_flush(timeout_millis=5000)
        _provider.shutdown()
        _provider = None


@contextlib.contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    kind: Kind = "internal",
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[None]:
    """A span around the block: a child of the current span, or of ``parent`` (a
    ``traceparent`` a record or request carried). Does nothing when tracing is off."""
    if _provider is None:
        yield
        return
    from opentelemetry import propagate, trace

    context = propagate.extract({"traceparent": parent}) if parent else None
    tracer = trace.get_tracer("aether")
    with tracer.start_as_current_span(
        name,
        context=context,
        kind=getattr(trace.SpanKind, kind.upper()),
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
    ):
        yield


def record(name: str, *, parent: str | None, start_ns: int, attributes: Mapping[str, Any]) -> None:
    """A span that began at ``start_ns`` (``time.time_ns()``) and ends now, a child of
    ``parent``: for work done for several traces at once (the leader's batched writes)."""
    if _provider is None:
        return
    from opentelemetry import propagate, trace

    context = propagate.extract({"traceparent": parent}) if parent else None
    done = trace.get_tracer("aether").start_span(
        name,
        context=context,
        start_time=start_ns,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )
    done.end()


def annotate(attributes: dict[str, Any], name: str | None = None) -> None:
    """Set attributes (and the name) of the current span."""
    if _provider is None:
        return
    from opentelemetry import trace

    current = trace.get_current_span()
    current.set_attributes({k: v for k, v in attributes.items() if v is not None})
    if name:
        current.update_name(name)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``."""
    if _provider is not None:
        from opentelemetry import propagate

        propagate.inject(headers)


def traceparent() -> str | None:
    """The current span's ``traceparent``, to keep in a record; None when off or outside
    a span."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def trace_id() -> str | None:
    """The current trace's id (32 hex digits), for log lines; None when off or outside."""
    if _provider is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class _TraceIdFilter(logging.Filter):
    """Log lines made inside a span carry its trace id (``record.trace_id``, and a
    ``trace=`` suffix on the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = trace_id()
        record.trace_id = found or ""
        if found and not getattr(record, "_traced", False):
            record.msg = f"{record.msg} [trace={found}]"
            record._traced = True
        return True
