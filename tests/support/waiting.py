"""Waiting for a condition in tests: poll, never sleep a fixed time.

``eventually`` (async) and ``wait_for`` (sync) call ``check`` until it returns
something truthy and return that; past the timeout they fail with what was
awaited. The timeout only bounds how long a failing test takes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

__all__ = ["eventually", "wait_for"]

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(
    check: Callable[[], T | None], what: str, timeout: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    check: Callable[[], Any], what: str, timeout: float = 30.0, interval: float = 0.05
) -> Any:
    """``check()`` (a plain or an async function) until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(interval)


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.1) -> T:
    """``check()`` until it is truthy, from a test that is not async; an exception it
    raises (the check may race the system under test) counts as not yet."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_error})"
    )
