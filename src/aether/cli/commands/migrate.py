"""``migrate``, ``migrations``, ``drain``, ``undrain``, ``rebalance``, ``snapshots``."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from aether.cli.output import CliError, emit, table
from aether.cli.session import api_client
from aether.model.migrations import MIGRATION_FINAL, MigrationOut
from aether.model.rebalance import RebalanceOut

__all__ = ["run"]

_POLL = 0.2


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def _describe(m: MigrationOut) -> str:
    target = m.to_node or "another node"
    took = ""
    if m.finished_at is not None:
        took = f" in {(m.finished_at - m.started_at).total_seconds():.1f}s"
    lines = [
        f"migration {m.id}: {m.instance} ({m.kind}) {m.from_node} -> {target}: {m.status}{took}"
    ]
    if m.replacement:
        lines.append(f"replacement: {m.replacement}")
    if m.snapshot:
        lines.append(f"snapshot:    {m.snapshot}")
    if m.reason:
        lines.append(f"reason:      {m.reason}")
    return "\n".join(lines)


async def _wait(client: Any, migration: MigrationOut, timeout: float) -> MigrationOut:
    deadline = time.monotonic() + timeout
    current = migration
    while current.status not in MIGRATION_FINAL:
        if time.monotonic() > deadline:
            raise CliError(
                f"migration {current.id} not finished after {timeout:.0f}s "
                f"({current.status}: {current.reason}); `aether migrations` follows it",
                kind="network",
                code="timeout",
            )
        await asyncio.sleep(_POLL)
        current = await client.migration(current.id)
    return current


async def _drained(client: Any, node: str, ids: list[str], timeout: float) -> list[MigrationOut]:
    """Wait until the node serves nothing and the drain's migrations have finished."""
    deadline = time.monotonic() + timeout
    while True:
        moves = [await client.migration(i) for i in ids]
        serving = [
            i
            for i in await client.instances()
            if i.node == node and i.command in ("LOAD", "ACTIVATE") and i.state != "FAILED"
        ]
        if not serving and all(m.status in MIGRATION_FINAL for m in moves):
            return moves
        if time.monotonic() > deadline:
            raise CliError(
                f"node {node} still serves {len(serving)} instance(s) after {timeout:.0f}s; "
                "`aether migrations` and `aether events` say why",
                kind="network",
                code="timeout",
            )
        await asyncio.sleep(_POLL)


async def _rebalanced(
    client: Any, app: str | None, timeout: float, wait: bool
) -> tuple[list[MigrationOut], RebalanceOut]:
    """Ask for moves until nothing is left to move (one at a time, each waited for);
    without ``wait``, return once the first one started."""
    deadline = time.monotonic() + timeout
    moves: list[MigrationOut] = []
    while True:
        answer = await client.rebalance(app)
        if answer.started is not None:
            if not wait:
                return [answer.started], answer
            done = await _wait(client, answer.started, max(1.0, deadline - time.monotonic()))
            moves.append(done)
            if done.status == "failed":
                raise CliError(
                    f"rebalance move {done.id} ({done.instance} -> {done.to_node}) failed: "
                    f"{done.reason}",
                    kind="network",
                    code="migration_failed",
                )
            continue
        waiting = any(r.kind == "waiting" for r in answer.refusals)
        if not wait or not (answer.planned or waiting):
            return moves, answer
        if time.monotonic() > deadline:  # a migration in flight, a rollout: wait for it
            raise CliError(
                f"rebalance not finished after {timeout:.0f}s ({answer.reason})",
                kind="network",
                code="timeout",
            )
        await asyncio.sleep(_POLL)


def _describe_rebalance(moves: list[MigrationOut], answer: RebalanceOut, wait: bool) -> str:
    lines = [f"{m.instance}: {m.from_node} -> {m.to_node} ({m.status})" for m in moves]
    if not wait and moves:
        lines.append(f"{len(answer.planned)} move(s) planned, one at a time")
    lines.append(answer.reason)
    for refusal in answer.refusals:
        if refusal.kind != "balanced":
            lines.append(f"{refusal.app}: {refusal.reason}")
    return "\n".join(lines)


async def _rebalance(client: Any, args: argparse.Namespace) -> None:
    moves, answer = await _rebalanced(client, args.app, args.timeout, not args.no_wait)
    data = {
        **answer.model_dump(mode="json", exclude={"started"}),
        "moves": [m.model_dump(mode="json") for m in moves],
    }
    emit(args, data, _describe_rebalance(moves, answer, not args.no_wait))


def _snapshot_words(words: list[str]) -> tuple[str, str | None, str | None]:
    """``[ls] [APP]`` or ``restore APP DIGEST`` → (action, app, digest)."""
    if words[:1] == ["restore"]:
        if len(words) != 3:
            raise CliError("usage: aether snapshots restore APP DIGEST", kind="usage", code="usage")
        return "restore", words[1], words[2]
    rest = words[1:] if words[:1] == ["ls"] else words
    if len(rest) > 1:
        raise CliError("usage: aether snapshots [ls] [APP]", kind="usage", code="usage")
    return "ls", (rest[0] if rest else None), None


async def _full_digest(client: Any, app: str, prefix: str) -> str:
    """The app's snapshot digest ``prefix`` names (with or without ``sha256:``)."""
    want = prefix if prefix.startswith("sha256:") else f"sha256:{prefix}"
    found = {s.digest for s in await client.snapshots(app, limit=1000) if s.digest.startswith(want)}
    if len(found) == 1:
        return str(found.pop())
    if not found:
        raise CliError(
            f"app {app!r} has no snapshot {prefix!r}; `aether snapshots ls {app}` lists them",
            kind="not_found",
            code="not_found",
        )
    raise CliError(
        f"{prefix!r} names {len(found)} snapshots: give more of it", kind="usage", code="usage"
    )


async def _snapshots(client: Any, args: argparse.Namespace) -> None:
    action, app, digest = _snapshot_words(list(args.words))
    if action == "restore":
        assert app is not None and digest is not None
        migration = await client.restore_snapshot(
            app, await _full_digest(client, app, digest), args.instance
        )
        if not args.no_wait:
            migration = await _wait(client, migration, args.timeout)
        emit(args, migration.model_dump(mode="json"), _describe(migration))
        if migration.status == "failed":
            raise CliError(
                f"restore (migration {migration.id}) failed: {migration.reason}",
                kind="network",
                code="migration_failed",
            )
        return
    snaps = await client.snapshots(app, limit=args.limit)
    emit(
        args,
        {"snapshots": [s.model_dump(mode="json") for s in snaps]},
        table(
            [
                [
                    s.app,
                    s.digest[:19],
                    _size(s.size_bytes),
                    s.kind,
                    s.status,
                    s.tier,
                    s.node,
                    s.created_at.isoformat(timespec="seconds"),
                ]
                for s in snaps
            ],
            ["app", "digest", "size", "kind", "status", "tier", "node", "created"],
        ),
    )


async def run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "migrate":
            migration = await client.migrate(args.instance, args.to)
            if not args.no_wait:
                migration = await _wait(client, migration, args.timeout)
            emit(args, migration.model_dump(mode="json"), _describe(migration))
            if migration.status == "failed":
                raise CliError(
                    f"migration {migration.id} failed: {migration.reason}",
                    kind="network",
                    code="migration_failed",
                )
        elif args.command == "migrations":
            moves = await client.migrations(args.app, limit=args.limit)
            emit(
                args,
                {"migrations": [m.model_dump(mode="json") for m in moves]},
                table(
                    [
                        [
                            m.id[:12],
                            m.app,
                            m.from_node,
                            m.to_node or "-",
                            m.kind,
                            m.status,
                            m.started_at.isoformat(timespec="seconds"),
                            m.reason[:60],
                        ]
                        for m in moves
                    ],
                    ["id", "app", "from", "to", "kind", "status", "started", "reason"],
                ),
            )
        elif args.command == "drain":
            answer = await client.drain(args.node)
            ids = list(answer.get("migrations", []))
            moves = await _drained(client, args.node, ids, args.timeout) if args.wait else []
            text = f"node {args.node} is draining; {len(ids)} instance(s) to move"
            if args.wait:
                text = f"node {args.node} drained: " + (
                    ", ".join(f"{m.instance} -> {m.to_node} ({m.status})" for m in moves)
                    or "nothing to move"
                )
            emit(args, {**answer, "moved": [m.model_dump(mode="json") for m in moves]}, text)
        elif args.command == "rebalance":
            await _rebalance(client, args)
        elif args.command == "undrain":
            answer = await client.undrain(args.node)
            emit(args, answer, f"node {args.node} takes instances again")
        else:
            await _snapshots(client, args)
    return 0
