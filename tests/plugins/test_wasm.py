"""The wasmtime runner with real modules: the example's verdicts, and hostile plugins
(endless loops, 4 GiB of memory, garbage, imports) contained with a clear reason."""

from __future__ import annotations

import time

import pytest
from wasmtime import wat2wasm

from aether.core.plugin_abi import (
    PluginLimits,
    encode,
    guard_input,
    guard_verdict,
    parse_risk,
    risk_rule,
)
from aether.model.risk import RiskStatus
from aether.plugins.wasm import LoadedPlugin, PluginError, WasmRunner, inspect, sha256
from tests.support.plugins import answering, example_wasm, growing, importing, looping, plugin


def loaded(wasm: bytes, kind: str = "guard", **limits: int) -> LoadedPlugin:
    return LoadedPlugin("p", "1", kind, sha256(wasm), wasm, PluginLimits(**limits))


def ask(kind: str) -> bytes:
    return encode(guard_input(3, kind, "node-1", {"draining": True}, "CRITICAL", None, 1.0))


@pytest.fixture(scope="module")
def runner() -> WasmRunner:
    return WasmRunner()


def test_the_example_refuses_drains_and_allows_the_rest(runner: WasmRunner) -> None:
    example = loaded(example_wasm())
    refused = guard_verdict(runner.run(example, ask("drain")))
    assert (refused.allow, refused.skipped) == (False, None)
    assert refused.reason == "change freeze: no node drains until it is lifted"
    allowed = guard_verdict(runner.run(example, ask("scale")))
    assert (allowed.allow, allowed.skipped) == (True, None)


def test_an_endless_loop_runs_out_of_fuel(runner: WasmRunner) -> None:
    started = time.monotonic()
    outcome = runner.run(loaded(looping(), fuel=1_000_000, deadline_ms=5000), ask("scale"))
    assert outcome.output is None
    assert outcome.error == "out of fuel: used its 1000000 units (an endless loop?)"
    assert time.monotonic() - started < 2.0


def test_an_endless_loop_with_fuel_to_spare_meets_the_deadline(runner: WasmRunner) -> None:
    started = time.monotonic()
    outcome = runner.run(loaded(looping(), fuel=10**15, deadline_ms=50), ask("scale"))
    elapsed = time.monotonic() - started
    assert outcome.error == "deadline: still running after 50 ms"
    assert 0.04 <= elapsed < 1.0
    # the epoch the deadline bumped does not cut the next evaluation short
    assert runner.run(loaded(example_wasm()), ask("scale")).error is None


def test_four_gib_of_memory_is_refused_by_the_limit(runner: WasmRunner) -> None:
    outcome = runner.run(loaded(growing(), memory_bytes=16 << 20), ask("scale"))
    assert outcome.error == (
        "trapped: out-of-bounds memory access (memory is limited to 16 MiB; "
        "memory.grow past it fails)"
    )
    # a module that starts with 4 GiB never instantiates
    huge = plugin("(i64.const 0)", memory=65536)
    outcome = runner.run(loaded(huge, memory_bytes=16 << 20), ask("scale"))
    assert outcome.error is not None
    assert outcome.error.startswith("memory limit: memory minimum size of 65536 pages")
    assert outcome.error.endswith("(16 MiB allowed)")


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (b"not json at all", "garbage: the output is not UTF-8 JSON"),
        (b"\xff\xfe", "garbage: the output is not UTF-8 JSON"),
        ([1, 2], "garbage: (the output): Input should be a valid dictionary"),
        ({"allow": "perhaps"}, "garbage: allow: Input should be a valid boolean"),
        ({"allow": True, "extra": 1}, "garbage: extra: Extra inputs are not permitted"),
    ],
)
def test_garbage_is_skipped_with_its_reason(
    runner: WasmRunner, output: object, reason: str
) -> None:
    verdict = guard_verdict(runner.run(loaded(answering(output)), ask("drain")))
    assert verdict.allow is True  # a skip never refuses
    assert verdict.skipped is not None and verdict.skipped.startswith(reason), verdict.skipped


def test_an_answer_outside_memory_and_a_wrong_abi_are_skipped(runner: WasmRunner) -> None:
    outside = plugin("(i64.const 0x7FFFFFFF00000010)")
    error = runner.run(loaded(outside), ask("scale")).error
    assert error is not None and error.startswith("garbage: evaluate returned bytes")
    assert "outside its 65536-byte memory" in error
    wrong = answering({"allow": True}, abi=2)
    assert runner.run(loaded(wrong), ask("scale")).error == (
        "abi_version() is 2; this server speaks 1"
    )


def test_a_risk_plugin_is_one_more_rule(runner: WasmRunner) -> None:
    answer = {"status": "HIGH", "root_cause": "Maintenance Window", "confidence": 0.5}
    outcome = runner.run(loaded(answering(answer), kind="risk"), b"{}")
    rule = risk_rule(outcome)
    assert not isinstance(rule, str)
    assert (rule.rule, rule.status, rule.root_cause, rule.confidence) == (
        "plugin.p",
        RiskStatus.HIGH,
        "Maintenance Window",
        0.5,
    )
    assert parse_risk(b'{"status": "DIRE", "root_cause": "x"}') == (
        "garbage: status: Input should be 'LOW', 'MEDIUM', 'HIGH' or 'CRITICAL'"
    )


def test_imports_and_non_plugins_are_refused_at_upload() -> None:
    with pytest.raises(PluginError, match=r"import nothing .* wasi_snapshot_preview1.fd_write"):
        inspect(importing())
    with pytest.raises(PluginError, match="no \\\\0asm header"):
        inspect(b"(module)")
    with pytest.raises(PluginError, match="not a valid WebAssembly module"):
        inspect(b"\0asm\x01\0\0\0garbage")
    with pytest.raises(PluginError, match="must export a function 'abi_version'"):
        inspect(bytes(wat2wasm('(module (memory (export "memory") 1))')))
    assert inspect(example_wasm()) == sha256(example_wasm())


def test_a_short_deadline_after_a_long_one_is_kept(runner: WasmRunner) -> None:
    """The watchdog sleeping toward an earlier call's later deadline is woken."""
    assert runner.run(loaded(example_wasm(), deadline_ms=1000), ask("scale")).error is None
    started = time.monotonic()
    outcome = runner.run(loaded(looping(), fuel=10**15, deadline_ms=30), ask("scale"))
    assert outcome.error == "deadline: still running after 30 ms"
    assert time.monotonic() - started < 0.5
