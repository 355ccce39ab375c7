"""Policy plugin evaluation time per decision (WebAssembly in wasmtime).

    .venv/bin/python -m bench.plugins_bench [--decisions 2000]

What the leader pays per decision, as it pays it (``aether.plugins.wasm.WasmRunner``,
one runner, modules compiled once and cached): the input JSON built and encoded
(``aether.core.plugin_abi``), a fresh ``Store`` and instance with fuel, memory
limit and a deadline timer, the call, the output read and validated.

- **guard**: the shipped example (examples/plugins/change-freeze, which scans the
  whole input) on a layer-3 drain decision;
- **risk**: a risk plugin that reads every byte of its input, then answers a
  verdict, on a node with a full price window (10 spot prices) and telemetry;
- **guard x3**: three guard plugins on one decision (what a cluster with three
  pays per decision);
- **hostile**: an endless loop, stopped by fuel (the default 20 M units) or the
  deadline (100 ms), whichever comes first -- what a broken plugin costs before it
  is skipped.

p50/p95/p99 in microseconds; results in bench/results/plugins.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

from wasmtime import wat2wasm

from aether.core.plugin_abi import (
    PluginLimits,
    encode,
    guard_input,
    guard_verdict,
    risk_input,
    risk_rule,
)
from aether.core.risk import Health, Signal, rule_results
from aether.plugins.wasm import LoadedPlugin, WasmRunner, sha256
from bench.common import percentile, wait_until_quiet, write_result

EXAMPLE = (
    Path(__file__).resolve().parent.parent / "examples/plugins/change-freeze/change_freeze.wat"
)

_ANSWER = b'{"status":"LOW","root_cause":"Stable","confidence":1.0}'
_ANSWER_WAT = "".join(f"\\{b:02x}" for b in _ANSWER)
RISK_WAT = f"""
(module
  (memory (export "memory") 1)
  (data (i32.const 16) "{_ANSWER_WAT}")
  (global $next (mut i32) (i32.const 4096))
  (func (export "abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
  (func (export "evaluate") (param $ptr i32) (param $len i32) (result i64)
    (local $i i32) (local $sum i32)
    (block $done
      (loop $read
        (br_if $done (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $sum (i32.add (local.get $sum)
          (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $read)))
    (i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len(_ANSWER)}))))
"""
LOOP_WAT = RISK_WAT.replace("(block $done", "(loop $forever (br $forever)) (block $done")


def _plugin(name: str, kind: str, wasm: bytes) -> LoadedPlugin:
    return LoadedPlugin(name, "1", kind, sha256(wasm), wasm, PluginLimits())


def _skipped(result: object) -> bool:
    """A verdict that is a skip (a string reason, or a guard verdict with ``skipped``)."""
    if isinstance(result, list):
        return any(_skipped(r) for r in result)
    return isinstance(result, str) or getattr(result, "skipped", None) is not None


def _time(decisions: int, one: Callable[[], object]) -> tuple[list[float], int]:
    """Microseconds per decision, and how many were skipped (a deadline on a busy machine)."""
    for _ in range(min(50, decisions)):  # warm: compiled, caches hot
        one()
    out = []
    skipped = 0
    for _ in range(decisions):
        start = time.perf_counter()
        skipped += _skipped(one())
        out.append((time.perf_counter() - start) * 1e6)
    return out, skipped


def _figures(timed: tuple[list[float], int]) -> dict[str, float]:
    samples, skipped = timed
    return {
        "n": len(samples),
        "skipped": skipped,
        "p50_us": round(percentile(samples, 50), 1),
        "p95_us": round(percentile(samples, 95), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "max_us": round(max(samples), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
    busy = wait_until_quiet(patience=20)
    runner = WasmRunner()
    guard = _plugin("change-freeze", "guard", bytes(wat2wasm(EXAMPLE.read_text())))
    risk = _plugin("reader", "risk", bytes(wat2wasm(RISK_WAT)))
    looping = _plugin("spinner", "risk", bytes(wat2wasm(LOOP_WAT)))
    now = time.time()
    signals = [Signal(i, "spot_price", 0.1 + i / 1000, "aws", now - 60 + i) for i in range(10)]
    health = Health(memory_fraction=0.5, disk_fraction=0.4, stale=False, age=0.5)
    builtin = rule_results(signals, health, now)
    drain = {"draining": True, "drained_by": "controller"}

    def one_guard() -> object:
        payload = encode(guard_input(3, "drain", "node-7", drain, "CRITICAL", None, now))
        return guard_verdict(runner.run(guard, payload))

    def three_guards() -> object:
        payload = encode(guard_input(3, "drain", "node-7", drain, "CRITICAL", None, now))
        return [guard_verdict(runner.run(guard, payload)) for _ in range(3)]

    def one_risk() -> object:
        payload = encode(risk_input("node-7", now, signals, health, builtin))
        return risk_rule(runner.run(risk, payload))

    def hostile() -> object:
        outcome = runner.run(looping, b"{}")
        assert outcome.error is not None, outcome
        assert outcome.error.startswith(("out of fuel", "deadline")), outcome.error
        return None  # skipped, as it must be: not counted

    results = {
        "guard": _figures(_time(args.decisions, one_guard)),
        "risk": _figures(_time(args.decisions, one_risk)),
        "guard_x3": _figures(_time(args.decisions // 2, three_guards)),
        "hostile_endless_loop": _figures(_time(max(20, args.decisions // 100), hostile)),
    }
    for name, figures in results.items():
        print(
            f"{name:22} p50 {figures['p50_us']:9.1f} us  p95 {figures['p95_us']:9.1f} us  "
            f"p99 {figures['p99_us']:9.1f} us"
        )
    write_result(
        "plugins",
        {
            "decisions": args.decisions,
            "machine_busy": busy,
            "limits": {"fuel": 20_000_000, "memory_bytes": 16 << 20, "deadline_ms": 100},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
