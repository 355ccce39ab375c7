"""Run policy plugins (WebAssembly, ABI in :mod:`aether.core.plugin_abi`) in wasmtime.

Each module is compiled once per sha256 and cached. Every evaluation gets a
fresh ``Store`` and instance, so nothing survives from one call to the next,
with three limits:

- **fuel** (``Config.consume_fuel``): a budget of instructions; a loop that
  never ends runs out ("out of fuel");
- **memory** (``Store.set_limits(memory_size=...)``): the linear memory may not
  grow past it (``memory.grow`` answers -1, as WebAssembly specifies; a module
  whose initial memory is larger fails to instantiate);
- **a wall-clock deadline** (``Config.epoch_interruption``): the runner's
  watchdog thread bumps the engine's epoch when the deadline of the call in
  progress passes, and the call traps ("deadline").

No imports are linked -- no WASI, no host functions: a module that imports
anything is refused by :func:`inspect` (at upload) and cannot instantiate.
A failure never raises out of :meth:`WasmRunner.run`: it comes back as a
:class:`~aether.core.plugin_abi.PluginOutcome` with ``error`` set.

Evaluations on one runner are serialised (one lock): the epoch is the
engine's, so two concurrent deadlines would cut each other short. The watchdog
bumps the epoch only while a call is registered with it (under its condition),
so a deadline never reaches into the next call.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from wasmtime import (
    Config,
    Engine,
    Func,
    FuncType,
    Instance,
    Memory,
    MemoryType,
    Module,
    Store,
    Trap,
    TrapCode,
    ValType,
    WasmtimeError,
)

from aether.core.plugin_abi import ABI_VERSION, MAX_OUTPUT_BYTES, PluginLimits, PluginOutcome

__all__ = [
    "MAX_MODULE_BYTES",
    "LoadedPlugin",
    "PluginError",
    "WasmRunner",
    "inspect",
    "sha256",
    "shared_runner",
]

MAX_MODULE_BYTES = 512 * 1024  # base64 in a JSON body: under the API's 1 MiB request limit
CACHE_SIZE = 64  # compiled modules kept
MAX_INPUT_BYTES = 1024 * 1024

_I32, _I64 = ValType.i32(), ValType.i64()
#: export name -> (params, results) it must have
_FUNCS: dict[str, tuple[list[ValType], list[ValType]]] = {
    "abi_version": ([], [_I32]),
    "alloc": ([_I32], [_I32]),
    "evaluate": ([_I32, _I32], [_I64]),
}


class PluginError(ValueError):
    """A module that is not a valid plugin (refused at upload)."""


@dataclass(frozen=True, slots=True)
class LoadedPlugin:
    """A plugin as the controller runs it."""

    name: str
    version: str
    kind: str
    sha256: str
    wasm: bytes
    limits: PluginLimits


def sha256(wasm: bytes) -> str:
    return hashlib.sha256(wasm).hexdigest()


def _same(a: list[ValType], b: list[ValType]) -> bool:
    return len(a) == len(b) and all(str(x) == str(y) for x, y in zip(a, b, strict=True))


def _kib(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n >= 1024 * 1024 else f"{n // 1024} KiB"


class WasmRunner:
    def __init__(self) -> None:
        config = Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self.engine = Engine(config)
        self._modules: OrderedDict[str, Module] = OrderedDict()
        self._lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._watch = threading.Condition()
        self._deadline: float | None = None  # monotonic; the call in progress
        self._waiting_until = math.inf  # when the watchdog wakes by itself
        self._watchdog: threading.Thread | None = None

    def _watchdog_loop(self) -> None:
        with self._watch:
            while True:
                if self._deadline is None:
                    self._waiting_until = math.inf
                    self._watch.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    self.engine.increment_epoch()  # the registered call traps
                    self._deadline = None
                    continue
                self._waiting_until = self._deadline
                self._watch.wait(remaining)

    def _arm(self, seconds: float | None) -> None:
        """Register the call in progress (its deadline), or clear it (None).

        The watchdog is woken only when it would otherwise sleep past the new
        deadline: back-to-back calls cost no thread switch each."""
        with self._watch:
            if self._watchdog is None:
                self._watchdog = threading.Thread(
                    target=self._watchdog_loop, name="plugin-deadline", daemon=True
                )
                self._watchdog.start()
            if seconds is None:
                self._deadline = None
                return
            self._deadline = time.monotonic() + seconds
            if self._deadline < self._waiting_until:
                self._watch.notify()

    # -- compiling ------------------------------------------------------------------

    def compile(self, wasm: bytes, digest: str | None = None) -> Module:
        """The compiled module (cached by sha256); PluginError when it is not a valid plugin."""
        digest = digest or sha256(wasm)
        with self._cache_lock:  # the API's upload check and the leader share the cache
            found = self._modules.get(digest)
            if found is not None:
                self._modules.move_to_end(digest)
                return found
        module = self._check(wasm)
        with self._cache_lock:
            self._modules[digest] = module
            while len(self._modules) > CACHE_SIZE:
                self._modules.popitem(last=False)
        return module

    def _check(self, wasm: bytes) -> Module:
        if len(wasm) > MAX_MODULE_BYTES:
            raise PluginError(f"the module is {len(wasm)} bytes; at most {MAX_MODULE_BYTES}")
        if not wasm.startswith(b"\0asm"):
            raise PluginError("not a WebAssembly binary (no \\0asm header); compile the text first")
        try:
            module = Module(self.engine, wasm)
        except WasmtimeError as exc:
            raise PluginError(f"not a valid WebAssembly module: {_first_line(exc)}") from None
        imports = [f"{i.module}.{i.name}" for i in module.imports]
        if imports:
            raise PluginError(
                "a plugin may import nothing (no WASI, no host functions); "
                f"this module imports {', '.join(imports[:5])}"
            )
        exports = {e.name: e.type for e in module.exports}
        if not isinstance(exports.get("memory"), MemoryType):
            raise PluginError("the module must export its memory as 'memory'")
        for name, (params, results) in _FUNCS.items():
            kind = exports.get(name)
            if not isinstance(kind, FuncType):
                raise PluginError(f"the module must export a function {name!r}")
            if not (_same(kind.params, params) and _same(kind.results, results)):
                want = f"({', '.join(map(str, params))}) -> {', '.join(map(str, results))}"
                raise PluginError(f"{name!r} must have the signature {want}")
        return module

    # -- running ----------------------------------------------------------------------

    def run(self, plugin: LoadedPlugin, payload: bytes) -> PluginOutcome:
        """Evaluate ``plugin`` on ``payload`` (UTF-8 JSON); never raises."""
        start = time.perf_counter()
        try:
            with self._lock:
                output = self._run(plugin, payload)
            return PluginOutcome(
                plugin.name, plugin.version, output=output, elapsed=time.perf_counter() - start
            )
        except Exception as exc:  # a plugin's failure is recorded, never raised
            return PluginOutcome(
                plugin.name,
                plugin.version,
                error=_reason(exc, plugin.limits),
                elapsed=time.perf_counter() - start,
            )

    def _run(self, plugin: LoadedPlugin, payload: bytes) -> bytes:
        if len(payload) > MAX_INPUT_BYTES:
            raise _Failure(f"the input is {len(payload)} bytes; at most {MAX_INPUT_BYTES}")
        module = self.compile(plugin.wasm, plugin.sha256)
        limits = plugin.limits
        store = Store(self.engine)
        store.set_fuel(limits.fuel)
        store.set_limits(memory_size=limits.memory_bytes, instances=1, tables=4, memories=1)
        store.set_epoch_deadline(1)  # the next bump of the epoch interrupts it
        self._arm(limits.deadline_ms / 1000.0)
        try:
            instance = Instance(store, module, [])
            exports = instance.exports(store)
            memory, abi, alloc, evaluate = (
                exports["memory"],
                exports["abi_version"],
                exports["alloc"],
                exports["evaluate"],
            )
            assert isinstance(memory, Memory)
            assert isinstance(abi, Func) and isinstance(alloc, Func) and isinstance(evaluate, Func)
            version = abi(store)
            if version != ABI_VERSION:
                raise _Failure(f"abi_version() is {version}; this server speaks {ABI_VERSION}")
            ptr = alloc(store, len(payload))
            if not isinstance(ptr, int) or ptr < 0 or ptr + len(payload) > memory.data_len(store):
                raise _Failure(f"garbage: alloc({len(payload)}) returned {ptr!r}, outside memory")
            memory.write(store, payload, ptr)
            packed = evaluate(store, ptr, len(payload))
            if not isinstance(packed, int):
                raise _Failure(f"garbage: evaluate returned {packed!r}")
            packed &= (1 << 64) - 1
            out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
            if out_len > MAX_OUTPUT_BYTES:
                raise _Failure(f"garbage: {out_len} bytes of output (at most {MAX_OUTPUT_BYTES})")
            if out_ptr + out_len > memory.data_len(store):
                raise _Failure(
                    f"garbage: evaluate returned bytes {out_ptr}..{out_ptr + out_len}, "
                    f"outside its {memory.data_len(store)}-byte memory"
                )
            return bytes(memory.read(store, out_ptr, out_ptr + out_len))
        finally:
            self._arm(None)


class _Failure(Exception):
    """A plugin that broke the ABI; the message is the recorded reason."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__


def _reason(exc: Exception, limits: PluginLimits) -> str:
    """The recorded reason a plugin was skipped."""
    if isinstance(exc, _Failure | PluginError):
        return str(exc)
    if isinstance(exc, Trap):
        code = exc.trap_code
        if code is TrapCode.OUT_OF_FUEL:
            return f"out of fuel: used its {limits.fuel} units (an endless loop?)"
        if code is TrapCode.INTERRUPT:
            return f"deadline: still running after {limits.deadline_ms} ms"
        if code is TrapCode.MEMORY_OUT_OF_BOUNDS:
            return (
                "trapped: out-of-bounds memory access (memory is limited to "
                f"{_kib(limits.memory_bytes)}; memory.grow past it fails)"
            )
        return f"trapped: {_first_line(exc).removeprefix('wasm trap: ')}"
    if isinstance(exc, WasmtimeError):
        message = _first_line(exc)
        if "exceeds memory limits" in message:
            return f"memory limit: {message} ({_kib(limits.memory_bytes)} allowed)"
        return f"failed: {message}"
    return f"failed: {type(exc).__name__}: {exc}"


_shared: WasmRunner | None = None


def shared_runner() -> WasmRunner:
    """One runner (engine and compile cache) for the process."""
    global _shared
    if _shared is None:
        _shared = WasmRunner()
    return _shared


def inspect(wasm: bytes) -> str:
    """Check ``wasm`` is a valid plugin (PluginError if not); its sha256.

    Compiles it on the process's runner, so the leader finds it in the cache."""
    digest = sha256(wasm)
    shared_runner().compile(wasm, digest)
    return digest
