"""The authoring decorators: ``@slice``, ``@entry`` and ``@batch`` mark what they
decorate (an attribute on the class or function) and return it unchanged; the
description module (``describe``) reads the marks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

__all__ = ["BatchSpec", "EntryMark", "SliceMark", "batch", "entry", "slice"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

SLICE_MARK = "__aether_slice__"
ENTRY_MARK = "__aether_entry__"
BATCH_MARK = "__aether_batch__"


@dataclass(frozen=True, slots=True)
class SliceMark:
    name: str | None


@dataclass(frozen=True, slots=True)
class EntryMark:
    name: str | None
    idempotent: bool


@dataclass(frozen=True, slots=True)
class BatchSpec:
    max_size: int
    max_wait_ms: float

    def describe(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "max_wait_ms": self.max_wait_ms}


@overload
def slice(target: T, /) -> T: ...
@overload
def slice(*, name: str | None = None) -> Callable[[T], T]: ...
def slice(target: Any = None, /, *, name: str | None = None) -> Any:
    """Mark a class (a service slice: its ``@entry`` methods) or a function (a lean
    slice: the function is its one entry point)."""

    def mark(obj: T) -> T:
        setattr(obj, SLICE_MARK, SliceMark(name))
        return obj

    return mark if target is None else mark(target)


@overload
def entry(func: F, /) -> F: ...
@overload
def entry(*, idempotent: bool = False, name: str | None = None) -> Callable[[F], F]: ...
def entry(func: Any = None, /, *, idempotent: bool = False, name: str | None = None) -> Any:
    """Mark a method as an entry point; ``idempotent`` lets handles retry a call on
    another instance when its instance is lost."""

    def mark(fn: F) -> F:
        setattr(fn, ENTRY_MARK, EntryMark(name, idempotent))
        return fn

    return mark if func is None else mark(func)


def batch(max_size: int, max_wait_ms: float) -> Callable[[F], F]:
    """The entry point takes a list of the single call's argument and returns a list
    of results, one per call; calls are gathered until ``max_size`` of them wait or
    the first has waited ``max_wait_ms``."""
    if max_size < 1 or max_wait_ms < 0:
        raise ValueError("batch: max_size must be ≥ 1 and max_wait_ms ≥ 0")

    def mark(fn: F) -> F:
        setattr(fn, BATCH_MARK, BatchSpec(max_size, max_wait_ms))
        return fn

    return mark
