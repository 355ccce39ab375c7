"""``aether models add|ls|get|rm|test``: the tenant's model endpoints (``model://NAME``).

The API key is never an argument (it would land in the shell's history and in
``ps``): ``--api-key-stdin`` reads it from stdin, else ``AETHER_MODEL_API_KEY``
gives it, else the model has none (a local server).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any
from urllib.parse import quote

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client

__all__ = ["KEY_ENV", "run"]

KEY_ENV = "AETHER_MODEL_API_KEY"
_HEADERS = ["name", "model id", "base url", "context", "in/1k", "out/1k", "key", "created"]


def _row(m: dict[str, Any]) -> list[str]:
    return [
        m["name"],
        m["model_id"],
        m["base_url"],
        str(m["context_window"]),
        f"{m['price_in_per_1k']:g}",
        f"{m['price_out_per_1k']:g}",
        "set" if m["api_key_set"] else "-",
        m["created_at"][:19],
    ]


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from stdin (``--api-key-stdin``) or the environment; None: no key."""
    if args.api_key_stdin:
        key = sys.stdin.readline().strip()
        if not key:
            raise CliError("--api-key-stdin: stdin gave no key", kind="usage")
        return key
    return os.environ.get(KEY_ENV) or None


def _body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": args.name,
        "provider": "openai",
        "base_url": args.base_url,
        "model_id": args.model_id,
        "context_window": args.context_window,
        "price_in_per_1k": args.price_in,
        "price_out_per_1k": args.price_out,
    }
    key = _api_key(args)
    if key is not None:
        body["api_key"] = key
    return body


def _tested(t: dict[str, Any]) -> str:
    usage = t["usage"]
    tokens = f"{usage['prompt_tokens']} in, {usage['completion_tokens']} out" if usage else "?"
    return (
        f"{t['ref']} answered in {t['latency_ms']:.0f} ms ({tokens} tokens, "
        f"finish: {t['finish_reason'] or '?'}): {t['reply']}"
    )


async def run(args: argparse.Namespace) -> int:
    command = args.models_command
    body = _body(args) if command == "add" else None  # stdin is read before any call
    async with api_client(args) as client:
        if command == "add":
            made = await client.models("POST", body=body)
            key = "with its API key (stored encrypted)" if made["api_key_set"] else "without a key"
            emit(args, made, f"model {made['name']} added as {made['ref']}, {key}")
        elif command == "ls":
            listed = await client.models("GET")
            emit(args, {"models": listed}, table([_row(m) for m in listed], _HEADERS))
        elif command == "get":
            got = await client.models("GET", f"/{quote(args.name, safe='')}")
            emit(args, got, table([_row(got)], _HEADERS))
        elif command == "rm":
            gone = await client.models("DELETE", f"/{quote(args.name, safe='')}")
            emit(args, gone, f"model {gone['name']} removed")
        else:
            tested = await client.models("POST", f"/{quote(args.name, safe='')}/test")
            emit(args, tested, _tested(tested))
    return 0
