"""The policy plugin ABI (version 1): what a WebAssembly plugin is given, what it must answer.

Pure: building the input JSON, validating the output and turning it into a
verdict. Running the module (wasmtime, fuel, memory, deadline) is
:mod:`aether.plugins.wasm`; docs/plugins.md has the whole contract.

A plugin module exports (and imports nothing):

- ``memory`` -- its linear memory;
- ``abi_version() -> i32`` -- returns ``1``;
- ``alloc(len: i32) -> i32`` -- a pointer to ``len`` writable bytes;
- ``evaluate(ptr: i32, len: i32) -> i64`` -- reads the input (UTF-8 JSON) at
  ``ptr``, returns ``(out_ptr << 32) | out_len`` of its output (UTF-8 JSON).

Two kinds:

- **risk** -- input ``{"abi": 1, "kind": "risk", "node", "now", "signals":
  [{kind, value, source, ts}], "health": {...}, "rules": {rule: {status,
  root_cause, confidence, ...}}}``; output ``{"status": "LOW"|"MEDIUM"|"HIGH"|
  "CRITICAL", "root_cause": str, "confidence": 0..1, "figures": {...}}`` (the
  last two optional). The verdict is one more rule, ``plugin.NAME``, in the
  node's assessment.
- **guard** -- input ``{"abi": 1, "kind": "guard", "now", "layer", "decision":
  {kind, target, action, reason, tenant}}``; output ``{"allow": bool, "reason":
  str}``. ``allow: false`` refuses the decision with the plugin's reason.

Anything else (not JSON, not an object, a missing or mistyped field, an
unknown status) is *garbage*: the plugin is skipped with the reason recorded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aether.core.risk import Health, RuleResult, Signal
from aether.model.risk import RiskAssessment, RiskStatus

__all__ = [
    "ABI_VERSION",
    "DEFAULT_DEADLINE_MS",
    "DEFAULT_FUEL",
    "DEFAULT_MEMORY_BYTES",
    "KINDS",
    "MAX_OUTPUT_BYTES",
    "GuardOutput",
    "GuardVerdict",
    "PluginKind",
    "PluginLimits",
    "PluginOutcome",
    "RiskOutput",
    "guard_input",
    "guard_verdict",
    "note_skips",
    "parse_guard",
    "parse_risk",
    "risk_input",
    "risk_rule",
]

ABI_VERSION = 1
PluginKind = Literal["risk", "guard"]
KINDS: tuple[PluginKind, ...] = ("risk", "guard")

DEFAULT_FUEL = 20_000_000  # wasmtime fuel units (about one per instruction)
DEFAULT_MEMORY_BYTES = 16 * 1024 * 1024  # the module's linear memory, at most
DEFAULT_DEADLINE_MS = 100  # wall clock per evaluation
MAX_OUTPUT_BYTES = 64 * 1024  # a longer answer is garbage


@dataclass(frozen=True, slots=True)
class PluginLimits:
    fuel: int = DEFAULT_FUEL
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    deadline_ms: int = DEFAULT_DEADLINE_MS


@dataclass(frozen=True, slots=True)
class PluginOutcome:
    """One evaluation: the output bytes, or why there are none (``error``)."""

    name: str
    version: str
    output: bytes | None = None
    error: str | None = None  # trapped, out of fuel, past the deadline, ...
    elapsed: float = 0.0  # seconds


class RiskOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: RiskStatus
    root_cause: str = Field(min_length=1, max_length=200)
    confidence: float = Field(default=1.0, ge=0.0, le=1.0)
    figures: dict[str, Any] = Field(default_factory=dict)


class GuardOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow: bool
    reason: str = Field(default="", max_length=500)


@dataclass(frozen=True, slots=True)
class GuardVerdict:
    """A guard plugin's word on one decision: a refusal, or a skip (``skipped`` set)."""

    name: str
    version: str
    allow: bool
    reason: str = ""
    skipped: str | None = None

    @property
    def label(self) -> str:
        return f"plugin {self.name} v{self.version}"


# -- inputs ------------------------------------------------------------------------------


def risk_input(
    node: str,
    now: float,
    signals: Sequence[Signal],
    health: Health,
    results: Sequence[RuleResult],
) -> dict[str, Any]:
    return {
        "abi": ABI_VERSION,
        "kind": "risk",
        "node": node,
        "now": now,
        "signals": [
            {"kind": s.kind, "value": s.value, "source": s.source, "ts": s.ts} for s in signals
        ],
        "health": {
            "memory_fraction": health.memory_fraction,
            "disk_fraction": health.disk_fraction,
            "stale": health.stale,
            "age": health.age,
        },
        "rules": {r.rule: r.as_input() for r in results},
    }


def guard_input(
    layer: int,
    kind: str,
    target: str,
    action: Mapping[str, Any],
    reason: str,
    tenant: str | None,
    now: float,
) -> dict[str, Any]:
    return {
        "abi": ABI_VERSION,
        "kind": "guard",
        "now": now,
        "layer": layer,
        "decision": {
            "kind": kind,
            "target": target,
            "action": dict(action),
            "reason": reason,
            "tenant": tenant,
        },
    }


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


# -- outputs -----------------------------------------------------------------------------


def _decode(output: bytes) -> tuple[Any, str | None]:
    if len(output) > MAX_OUTPUT_BYTES:
        return None, f"garbage: {len(output)} bytes of output (at most {MAX_OUTPUT_BYTES})"
    try:
        return json.loads(output.decode("utf-8")), None
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"garbage: the output is not UTF-8 JSON ({str(exc)[:120]})"


def _invalid(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(the output)"
    return f"garbage: {where}: {first['msg']}"


def parse_risk(output: bytes) -> RiskOutput | str:
    """The plugin's verdict, or the reason it is garbage."""
    value, error = _decode(output)
    if error is not None:
        return error
    try:
        return RiskOutput.model_validate(value)
    except ValidationError as exc:
        return _invalid(exc)


def parse_guard(output: bytes) -> GuardOutput | str:
    value, error = _decode(output)
    if error is not None:
        return error
    try:
        return GuardOutput.model_validate(value)
    except ValidationError as exc:
        return _invalid(exc)


def risk_rule(outcome: PluginOutcome) -> RuleResult | str:
    """A risk plugin's evaluation as one more rule (``plugin.NAME``), or why it is skipped."""
    if outcome.output is None:
        return outcome.error or "no output"
    parsed = parse_risk(outcome.output)
    if isinstance(parsed, str):
        return parsed
    figures = {**parsed.figures, "plugin_version": outcome.version}
    return RuleResult(
        f"plugin.{outcome.name}", parsed.status, parsed.root_cause, parsed.confidence, figures
    )


def guard_verdict(outcome: PluginOutcome) -> GuardVerdict:
    if outcome.output is None:
        return GuardVerdict(outcome.name, outcome.version, True, skipped=outcome.error)
    parsed = parse_guard(outcome.output)
    if isinstance(parsed, str):
        return GuardVerdict(outcome.name, outcome.version, True, skipped=parsed)
    reason = parsed.reason or "(the plugin gave no reason)"
    return GuardVerdict(outcome.name, outcome.version, parsed.allow, reason)


def note_skips(assessment: RiskAssessment, skips: Mapping[str, str]) -> RiskAssessment:
    """The assessment with each skipped plugin's reason in its ``inputs``
    (``plugin.NAME: {"skipped": reason}``); a skip never changes the verdict."""
    if not skips:
        return assessment
    inputs = {**assessment.inputs, **{f"plugin.{n}": {"skipped": r} for n, r in skips.items()}}
    return assessment.model_copy(update={"inputs": inputs})
