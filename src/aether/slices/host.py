"""The slice host: ``python -m aether.slices.host`` runs one slice instance.

Environment: ``AETHER_SLICE`` (``module:attribute``, imported with the working
directory on ``sys.path``), ``PORT``, ``AETHER_SLICE_HOST`` (default ``127.0.0.1``),
``AETHER_SLICE_CONTROL_KEY`` (without it, control calls are refused),
``AETHER_APP`` (the slice's name when the decorator gives none),
``AETHER_SLICE_THREADS`` (how many sync entry point calls run at once; 32).

LOAD imports the module and constructs the slice; the port then listens
(``/healthz`` answers 503); ACTIVATE runs ``activate`` and serves (``/healthz``
200). SIGTERM (or SIGINT): new calls are answered ``unavailable``, calls in flight
finish, ``deactivate`` runs, the process exits 0. A failed import, construction or
``activate`` prints its traceback on stderr and exits 1.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import signal
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from aether.slices.describe import SliceSpec, describe_slice
from aether.slices.dispatch import Dispatcher
from aether.slices.server import SliceProtocol

__all__ = ["load", "main"]


def load(path: str, app: str | None = None) -> tuple[SliceSpec, Any]:
    """Import ``module:attribute``, describe it and construct it (LOAD)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"AETHER_SLICE must be module:attribute, not {path!r}")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    spec = describe_slice(target)
    if app and not _named(target):
        spec = replace(spec, name=app)
    instance = target() if inspect.isclass(target) else target
    return spec, instance


def _named(target: Any) -> bool:
    mark = getattr(target, "__aether_slice__", None)
    return getattr(mark, "name", None) is not None


async def _call_hook(instance: Any, name: str) -> None:
    if inspect.isroutine(instance):  # a lean slice has no hooks
        return
    hook = getattr(instance, name, None)
    if hook is None or not callable(hook):
        return
    if inspect.iscoroutinefunction(hook):
        await hook()
    else:
        await asyncio.to_thread(hook)


async def serve(
    spec: SliceSpec, instance: Any, host: str, port: int, key: str | None, threads: int = 32
) -> int:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(threads, thread_name_prefix="entry"))
    connections: set[SliceProtocol] = set()
    lock = asyncio.Lock()

    async def lifecycle(step: str) -> None:
        async with lock:
            if step == "activate" and dispatcher.state in ("loading", "inactive"):
                await _call_hook(instance, "activate")
                dispatcher.state = "active"
            elif step == "deactivate" and dispatcher.state in ("active", "draining"):
                await dispatcher.drain()
                await _call_hook(instance, "deactivate")
                dispatcher.state = "inactive"

    dispatcher = Dispatcher(spec, instance, key, lifecycle)
    server = await loop.create_server(
        lambda: SliceProtocol(dispatcher, connections), host, port, reuse_address=True
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await lifecycle("activate")
    except Exception:
        traceback.print_exc()
        server.close()
        return 1
    print(f"slice {spec.name} serving on {host}:{port}", file=sys.stderr, flush=True)
    await stop.wait()
    print(f"slice {spec.name}: draining {dispatcher.in_flight} calls", file=sys.stderr, flush=True)
    server.close()  # no new connections; the open ones get `unavailable` meanwhile
    code = 0
    try:
        await lifecycle("deactivate")
    except Exception:
        traceback.print_exc()
        code = 1
    for connection in list(connections):
        connection.close()
    await asyncio.sleep(0)
    return code


def main() -> int:
    path = os.environ.get("AETHER_SLICE", "")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec, instance = load(path, os.environ.get("AETHER_APP") or None)
        port = int(os.environ.get("PORT", "8000"))
    except BaseException:
        traceback.print_exc()
        return 1
    host = os.environ.get("AETHER_SLICE_HOST") or "127.0.0.1"
    key = os.environ.get("AETHER_SLICE_CONTROL_KEY") or None
    threads = max(1, int(os.environ.get("AETHER_SLICE_THREADS") or 32))
    return asyncio.run(serve(spec, instance, host, port, key, threads))


if __name__ == "__main__":
    sys.exit(main())
