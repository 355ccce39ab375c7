"""The host's core: a call frame in, an answer frame out (through ``reply``).

The dispatcher knows the slice's entry points, runs calls concurrently (an async
entry point as a task on the loop, a sync one in a thread), honours deadlines, keeps
per entry point counters for ``$stats``, and answers the control entries to a caller
holding the control key. It does not know about sockets (``server`` does).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from aether.slices.batching import Batcher
from aether.slices.context import DEADLINE, TRACE
from aether.slices.describe import BadArguments, EntrySpec, SliceSpec
from aether.slices.errors import CallError
from aether.slices.handles import POOL
from aether.slices.registry import REGISTRY

__all__ = ["Dispatcher", "EntryStats", "Reply"]

Reply = Callable[[dict[str, Any]], None]


@dataclass(slots=True)
class EntryStats:
    calls: int = 0
    errors: int = 0
    duration_s: float = 0.0
    in_flight: int = 0

    def take(self) -> dict[str, Any]:
        """The counters since the last take (``in_flight`` is the current count)."""
        out = {
            "calls": self.calls,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 6),
            "in_flight": self.in_flight,
        }
        self.calls, self.errors, self.duration_s = 0, 0, 0.0
        return out


@dataclass(slots=True)
class _Runner:
    spec: EntrySpec
    func: Callable[..., Any]
    stats: EntryStats = field(default_factory=EntryStats)
    batcher: Batcher | None = None


def _error(call_id: Any, code: str, message: str, details: Any = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"id": call_id, "ok": False, "error": error}


class Dispatcher:
    """States: ``loading`` → ``active`` ⇄ ``draining`` → ``inactive``; calls are
    served while ``active``, refused ``unavailable`` otherwise (control calls always)."""

    def __init__(
        self,
        spec: SliceSpec,
        instance: Any,
        key: str | None,
        lifecycle: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.spec = spec
        self.state = "loading"
        self._key = key.encode() if key else None
        self._lifecycle = lifecycle
        self._tasks: set[asyncio.Task[None]] = set()
        self.runners: dict[str, _Runner] = {}
        for name, entry in spec.entries.items():
            func = getattr(instance, entry.attr) if entry.attr else instance
            runner = _Runner(entry, func)
            if entry.batch is not None:
                runner.batcher = Batcher(self._batch_call(entry, func), entry.batch)
            self.runners[name] = runner

    # -- calls -------------------------------------------------------------------

    def handle(self, message: dict[str, Any], reply: Reply) -> None:
        call_id = message.get("id")
        entry = message.get("entry")
        if not isinstance(entry, str):
            reply(_error(call_id, "bad_request", "a call needs an entry"))
            return
        if entry.startswith("$"):
            self._start(self._control(call_id, entry, message, reply))
            return
        runner = self.runners.get(entry)
        if runner is None:
            reply(_error(call_id, "not_found", f"no entry point {entry!r}"))
            return
        stats = runner.stats
        if self.state != "active":
            reply(
                _error(call_id, "unavailable", f"the instance is {self.state}", {"started": False})
            )
            return
        deadline = message.get("deadline")
        if deadline is not None and not isinstance(deadline, int | float):
            deadline = None
        if deadline is not None and deadline <= time.time():
            stats.calls += 1
            stats.errors += 1
            reply(_error(call_id, "deadline_exceeded", f"{entry}: the deadline had passed"))
            return
        args = message.get("args") or []
        kwargs = message.get("kwargs") or {}
        try:
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise BadArguments("args must be an array and kwargs an object")
            arguments = runner.spec.arguments(args, kwargs)
        except BadArguments as exc:
            stats.calls += 1
            stats.errors += 1
            reply(_error(call_id, "bad_request", exc.message, exc.details))
            return
        trace = message.get("trace")
        if not isinstance(trace, str):
            trace = None
        stats.in_flight += 1  # counted from now, so a drain waits for it
        self._start(self._run(call_id, runner, arguments, deadline, trace, reply))

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        call_id: Any,
        runner: _Runner,
        arguments: dict[str, Any],
        deadline: float | None,
        trace: str | None,
        reply: Reply,
    ) -> None:
        spec, stats = runner.spec, runner.stats
        DEADLINE.set(deadline)
        TRACE.set(trace)
        started = time.perf_counter()
        try:
            if deadline is None:
                result = await self._invoke(runner, arguments)
            else:
                loop = asyncio.get_running_loop()
                async with asyncio.timeout_at(loop.time() + (deadline - time.time())) as scope:
                    try:
                        result = await self._invoke(runner, arguments)
                    except TimeoutError:
                        if scope.expired():
                            raise
                        raise RuntimeError("TimeoutError raised by the entry point") from None
            answer = {"id": call_id, "ok": True, "result": spec.result(result)}
        except TimeoutError:
            answer = _error(call_id, "deadline_exceeded", f"{spec.name}: past the deadline")
        except CallError as exc:
            code = "deadline_exceeded" if exc.code == "deadline_exceeded" else "internal"
            answer = _error(call_id, code, f"{spec.name}: a call it made failed: {exc}")
        except Exception as exc:
            answer = _error(call_id, "internal", f"{type(exc).__name__}: {exc}")
        finally:
            stats.in_flight -= 1
            stats.calls += 1
            stats.duration_s += time.perf_counter() - started
        if not answer["ok"]:
            stats.errors += 1
        reply(answer)

    async def _invoke(self, runner: _Runner, arguments: dict[str, Any]) -> Any:
        if runner.batcher is not None:
            (item,) = arguments.values()
            return await runner.batcher.submit(item)
        if runner.spec.is_async:
            return await runner.func(**arguments)
        return await asyncio.to_thread(runner.func, **arguments)

    @staticmethod
    def _batch_call(
        spec: EntrySpec, func: Callable[..., Any]
    ) -> Callable[[list[Any]], Awaitable[list[Any]]]:
        async def run(items: list[Any]) -> list[Any]:
            if spec.is_async:
                result: list[Any] = await func(items)
            else:
                result = await asyncio.to_thread(func, items)
            return result

        return run

    # -- lifecycle -----------------------------------------------------------------

    async def drain(self) -> None:
        """Stop taking calls and wait for those in flight."""
        if self.state == "active":
            self.state = "draining"
        while self.in_flight:
            await asyncio.sleep(0.01)

    @property
    def in_flight(self) -> int:
        return sum(r.stats.in_flight for r in self.runners.values())

    # -- control -------------------------------------------------------------------

    def _key_ok(self, key: Any) -> bool:
        if self._key is None or not isinstance(key, str):
            return False
        return hmac.compare_digest(self._key, key.encode())

    async def _control(
        self, call_id: Any, entry: str, message: dict[str, Any], reply: Reply
    ) -> None:
        if not self._key_ok(message.get("key")):
            reply(_error(call_id, "not_found", f"no entry point {entry!r}"))
            return
        kwargs = message.get("kwargs") or {}
        try:
            result = await self._control_result(entry, kwargs if isinstance(kwargs, dict) else {})
        except LookupError:
            reply(_error(call_id, "not_found", f"no entry point {entry!r}"))
            return
        except (ValueError, TypeError) as exc:
            reply(_error(call_id, "bad_request", f"{entry}: {exc}"))
            return
        except Exception as exc:
            reply(_error(call_id, "internal", f"{entry}: {type(exc).__name__}: {exc}"))
            return
        reply({"id": call_id, "ok": True, "result": result})

    async def _control_result(self, entry: str, kwargs: dict[str, Any]) -> Any:
        if entry == "$describe":
            return self.spec.describe()
        if entry == "$stats":
            return {name: runner.stats.take() for name, runner in self.runners.items()}
        if entry == "$endpoints":
            node = kwargs.get("node")
            count = REGISTRY.replace(kwargs.get("table") or {}, None if node is None else str(node))
            await POOL.retain(REGISTRY.urls())
            return {"endpoints": count}
        if entry == "$snapshot":
            snapshot = kwargs.get("snapshot")
            if not isinstance(snapshot, dict):
                raise ValueError("snapshot must be an object")
            REGISTRY.snapshot = snapshot
            return {"ok": True}
        if entry in ("$activate", "$deactivate") and self._lifecycle is not None:
            await self._lifecycle(entry[1:])
            return {"state": self.state}
        raise LookupError(entry)
