"""The current call's deadline and trace, as the host sets them for each call, so
handles pass them on to the calls an entry point makes."""

from __future__ import annotations

from contextvars import ContextVar

__all__ = ["DEADLINE", "TRACE"]

DEADLINE: ContextVar[float | None] = ContextVar("aether_slice_deadline", default=None)
"""Unix seconds after which the current call's caller no longer waits."""

TRACE: ContextVar[str | None] = ContextVar("aether_slice_trace", default=None)
"""The current call's trace context (a W3C ``traceparent``), when it came with one."""
