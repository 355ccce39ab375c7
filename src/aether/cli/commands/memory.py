"""``aether memory add|search|ls|rm``: an agent's memories (``/api/v1/memory``)."""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

from aether.cli.output import emit, table
from aether.cli.session import api_client

__all__ = ["run"]

_TEXT_CHARS = 70  # of a memory's text in a table
_HEADERS = ["id", "thread", "text", "created"]
_HIT_HEADERS = ["score", "id", "thread", "text"]


def _short(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _TEXT_CHARS else flat[: _TEXT_CHARS - 1] + "…"


def _row(m: dict[str, Any]) -> list[str]:
    return [m["id"], m["thread_id"] or "-", _short(m["text"]), m["created_at"][:19]]


def _hit(h: dict[str, Any]) -> list[str]:
    return [f"{h['score']:.4f}", h["id"], h["thread_id"] or "-", _short(h["text"])]


def _search_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {"agent_id": args.agent, "q": args.query, "mode": args.mode}
    params["limit"] = args.limit
    if args.thread:
        params["thread_id"] = args.thread
    if args.embedding_model:
        params["embedding_model"] = args.embedding_model
    return params


async def run(args: argparse.Namespace) -> int:
    command = args.memory_command
    async with api_client(args) as client:
        if command == "add":
            body: dict[str, Any] = {"agent_id": args.agent, "text": args.text}
            if args.thread:
                body["thread_id"] = args.thread
            if args.embedding_model:
                body["embedding_model"] = args.embedding_model
            made = await client.json("POST", "/api/v1/memory", json=body)
            scope = f"thread {made['thread_id']}" if made["thread_id"] else "all its threads"
            emit(args, made, f"memory {made['id']} kept for {args.agent} ({scope})")
        elif command == "search":
            params = _search_params(args)
            hits = await client.json("GET", "/api/v1/memory/search", params=params)
            shown = table([_hit(h) for h in hits], _HIT_HEADERS) if hits else "no memory matches"
            emit(args, {"hits": hits}, shown)
        elif command == "ls":
            params = {"agent_id": args.agent, "limit": args.limit}
            if args.thread:
                params["thread_id"] = args.thread
            page = await client.json("GET", "/api/v1/memory", params=params)
            items = page["items"]
            emit(args, page, table([_row(m) for m in items], _HEADERS) if items else "no memories")
        else:
            gone = await client.json("DELETE", f"/api/v1/memory/{quote(args.id, safe='')}")
            emit(args, gone, f"memory {gone['id']} deleted")
    return 0
