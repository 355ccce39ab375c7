"""WebAssembly plugin modules for tests, written in the text format and compiled with
``wasmtime.wat2wasm`` (the Python package's own: nothing else to install)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wasmtime import wat2wasm

__all__ = [
    "EXAMPLE",
    "answering",
    "example_wasm",
    "growing",
    "importing",
    "looping",
    "plugin",
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples/plugins/change-freeze/change_freeze.wat"


def _wat_string(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def plugin(evaluate: str, *, data: bytes = b"", memory: int = 1, abi: int = 1) -> bytes:
    """A module that follows the ABI, with ``evaluate``'s body given (params ``$ptr``,
    ``$len``; returns i64) and ``data`` at offset 16."""
    text = f"""
(module
  (memory (export "memory") {memory})
  (data (i32.const 16) "{_wat_string(data)}")
  (global $next (mut i32) (i32.const 4096))
  (func (export "abi_version") (result i32) (i32.const {abi}))
  (func (export "alloc") (param $len i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $len)))
    (local.get $p))
  (func (export "evaluate") (param $ptr i32) (param $len i32) (result i64)
    {evaluate}))
"""
    return bytes(wat2wasm(text))


def answering(output: Any, **kw: Any) -> bytes:
    """A plugin that answers ``output`` (JSON, or raw bytes) whatever it is asked."""
    data = output if isinstance(output, bytes) else json.dumps(output).encode()
    packed = f"(i64.or (i64.shl (i64.const 16) (i64.const 32)) (i64.const {len(data)}))"
    return plugin(packed, data=data, **kw)


def looping() -> bytes:
    """A plugin whose evaluate never returns."""
    return plugin("(loop $forever (br $forever)) (unreachable)")


def growing() -> bytes:
    """A plugin that asks for 4 GiB of memory (65536 pages) and, refused, writes past
    its memory's end."""
    return plugin(
        "(drop (memory.grow (i32.const 65535)))"
        "(i32.store (i32.const 0xFFFFFFF0) (i32.const 1))"
        "(i64.const 0)"
    )


def importing() -> bytes:
    """A module that imports a WASI function (refused: plugins import nothing)."""
    return bytes(
        wat2wasm("""
(module
  (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "abi_version") (result i32) (i32.const 1))
  (func (export "alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "evaluate") (param i32 i32) (result i64) (i64.const 0)))
""")
    )


def example_wasm() -> bytes:
    """The shipped example (examples/plugins/change-freeze), compiled."""
    return bytes(wat2wasm(EXAMPLE.read_text()))
