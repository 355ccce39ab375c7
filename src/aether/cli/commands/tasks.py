"""``aether task ...`` and ``aether vm ...``: the queue and its sandboxes."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aether.cli.output import CliError, emit
from aether.cli.reads import get_json
from aether.cli.session import api_client, load_session
from aether.errors import AetherError

if TYPE_CHECKING:  # the pydantic models are imported by the client, when one is made
    from aether.model.tasks import TaskOut

__all__ = ["BATCH", "read_task_file", "run"]

BATCH = 1000  # tasks per ``POST /tasks:batch``, the server's limit


def _payload(args: argparse.Namespace) -> dict[str, Any]:
    if args.payload:
        try:
            data = json.loads(args.payload)
        except ValueError as exc:
            raise CliError(f"-payload is not JSON: {exc}", kind="usage") from None
        if not isinstance(data, dict):
            raise CliError("-payload must be a JSON object", kind="usage")
        return data
    payload: dict[str, Any] = {}
    fields = {
        "name": args.name,
        "vcpus": args.vcpus,
        "memory_mb": args.memory,
        "driver": args.driver,
        "vm_id": args.sandbox_id,
        "command": args.cmd,
        "app": args.app,
    }
    payload.update({k: v for k, v in fields.items() if v is not None})
    if args.network:
        payload["network"] = True
    if args.args is not None:
        payload["args"] = shlex.split(args.args)
    if args.secret:
        payload["secrets"] = _secret_refs(args.secret)
    return payload


def _secret_refs(pairs: list[str]) -> dict[str, str]:
    """``--secret ENV=name`` (repeatable): the tenant's secret ``name`` in ``$ENV``."""
    refs: dict[str, str] = {}
    for pair in pairs:
        env, sep, name = pair.partition("=")
        if not sep or not env or not name:
            raise CliError(f"--secret {pair!r}: write ENV=secret-name", kind="usage")
        refs[env] = name
    return refs


def _task_text(task: dict[str, Any]) -> str:
    """A task's text, from its JSON (as ``--format json`` prints it)."""
    lines = [
        f"task {task['id']}  {task['type']}  {task['state']}  (attempts {task['attempts']}, "
        f"priority {task['priority']}, queue {task['queue']})"
    ]
    if task["error"]:
        lines.append(f"error: {task['error']}")
    if task["result"] is not None:
        result = task["result"]
        if "exit_code" in result:
            lines.append(f"exit code {result['exit_code']}")
            if result.get("stdout"):
                lines.append(str(result["stdout"]).rstrip("\n"))
            if result.get("stderr"):
                lines.append(f"stderr: {str(result['stderr']).rstrip()}")
        else:
            lines.append(json.dumps(result))
    return "\n".join(lines)


#: Seconds one long poll of the task waits (the server answers as soon as it is final).
LONG_POLL = 20.0


async def _wait(client: Any, task_id: str, timeout: float) -> TaskOut:
    import asyncio  # here: `task get` runs without it

    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        left = deadline - time.monotonic()
        asked = time.monotonic()
        task: TaskOut = await client.task(task_id, wait=max(0.0, min(LONG_POLL, left)))
        if task.state.final:
            return task
        if time.monotonic() > deadline:
            raise CliError(
                f"task {task_id} still {task.state.value} after {timeout:.0f}s",
                kind="network",
                code="timeout",
            )
        if time.monotonic() - asked < 0.5 * min(LONG_POLL, left):
            # answered early and not final: a server that does not long-poll; back off
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.5)


def _exec_argv(args: argparse.Namespace) -> list[str]:
    """The command after ``--``; options written before it still count."""
    argv = list(args.argv)
    if "--" not in argv:
        return argv
    cut = argv.index("--")
    before, command = argv[:cut], argv[cut + 1 :]
    options = {
        "--format": "format",
        "--timeout": "timeout",
        "--server": "server",
        "--token": "token",
    }
    i = 0
    while i < len(before):
        name = options.get(before[i])
        if name is None or i + 1 >= len(before):
            raise CliError(f"unexpected {before[i]!r} before --", kind="usage")
        value: Any = before[i + 1]
        setattr(args, name, float(value) if name == "timeout" else value)
        i += 2
    return command


def _check_succeeded(task: TaskOut) -> None:
    if task.state.value != "succeeded":
        raise CliError(
            f"task {task.id} {task.state.value}: {task.error or 'no details'}",
            kind="network",
            code=f"task_{task.state.value}",
        )


def run(args: argparse.Namespace) -> int | Coroutine[Any, Any, int]:
    if args.command == "task" and args.task_command == "get":
        return _get(args)
    return _run(args)


def _get(args: argparse.Namespace) -> int:
    """``task get``: one GET on the quick read path (``aether.cli.reads``)."""
    session = load_session(getattr(args, "server", None), getattr(args, "token", None))
    task = get_json(session, f"/api/v1/tasks/{args.id}")
    emit(args, task, _task_text(task))
    return 0


async def _run(args: argparse.Namespace) -> int:
    async with api_client(args) as client:
        if args.command == "task":
            return await _task(args, client)
        return await _vm(args, client)


async def _task(args: argparse.Namespace, client: Any) -> int:
    sub = args.task_command
    if sub == "submit" and args.from_file:
        return await _submit_file(args, client)
    if sub == "submit":
        if not args.type:
            raise CliError("-type is required (or --from-file FILE)", kind="usage")
        body: dict[str, Any] = {"type": args.type, "payload": _payload(args)}
        body.update(_task_options(args))
        task = await client.submit_task(body)
        if args.wait:
            task = await _wait(client, task.id, (args.timeout or 600) + 60)
    elif sub == "list":
        tasks = await client.tasks(
            state=args.state, type=args.type, queue=args.queue, limit=args.limit
        )
        emit(
            args,
            {"tasks": [t.model_dump(mode="json") for t in tasks]},
            "\n".join(
                f"{t.id}  {t.type:<11} {t.state.value:<10} attempts={t.attempts} "
                f"p={t.priority} {t.created_at.isoformat(timespec='seconds')}"
                for t in tasks
            )
            or "no tasks",
        )
        return 0
    elif sub == "cancel":
        task = await client.cancel_task(args.id)
    else:
        task = await _wait(client, args.id, args.timeout)
    data = task.model_dump(mode="json")
    emit(args, data, _task_text(data))
    return 0


def _task_options(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("priority", "queue", "max_retry", "timeout", "delay", "idempotency_key")
    return {f: getattr(args, f) for f in fields if getattr(args, f) is not None}


def read_task_file(text: str, source: str) -> list[dict[str, Any]]:
    """The task objects of a ``--from-file`` file: a JSON array, or JSON Lines."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            tasks = json.loads(text)
        except ValueError as exc:
            raise CliError(f"{source} is not a JSON array: {exc}", kind="usage") from None
        numbered = list(enumerate(tasks, 1))
        where = "item"
    else:
        numbered = []
        where = "line"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((n, json.loads(line)))
            except ValueError as exc:
                raise CliError(f"{source} line {n} is not JSON: {exc}", kind="usage") from None
    for n, task in numbered:
        if not isinstance(task, dict) or not isinstance(task.get("type"), str):
            raise CliError(f'{source} {where} {n} is not a task object with a "type"', kind="usage")
    if not numbered:
        raise CliError(f"{source} has no task", kind="usage")
    return [task for _, task in numbered]


async def _submit_file(args: argparse.Namespace, client: Any) -> int:
    """``task submit --from-file``: every task in batches of ``BATCH`` (one transaction
    each); options given on the command line fill what a task leaves out."""
    source = "stdin" if args.from_file == "-" else args.from_file
    try:
        text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text()
    except OSError as exc:
        raise CliError(f"cannot read {source}: {exc.strerror}", kind="usage") from None
    defaults = _task_options(args)
    defaults.pop("idempotency_key", None)  # one key names one task: not a default
    bodies = [{**defaults, **task} for task in read_task_file(text, source)]
    queued: list[TaskOut] = []
    for start in range(0, len(bodies), BATCH):
        try:
            queued += await client.submit_tasks(bodies[start : start + BATCH])
        except AetherError as exc:
            if queued:
                exc.message = (
                    f"{exc.message} (tasks {start + 1} to "
                    f"{min(start + BATCH, len(bodies))} of {source}; the {len(queued)} "
                    "before them are queued)"
                )
            raise
    if args.wait:
        queued = [await _wait(client, t.id, (args.timeout or 600) + 60) for t in queued]
    emit(
        args,
        {"tasks": [t.model_dump(mode="json") for t in queued]},
        "\n".join(f"{t.id}  {t.type:<11} {t.state.value}" for t in queued),
    )
    return 0


async def _vm(args: argparse.Namespace, client: Any) -> int:
    sub = args.vm_command
    if sub == "create":
        payload = {"name": args.name, "vcpus": args.vcpus, "memory_mb": args.memory}
        if args.driver:
            payload["driver"] = args.driver
        if args.network:
            payload["network"] = True
        task = await _wait(
            client, (await client.submit_task({"type": "vm:create", "payload": payload})).id, 300
        )
        _check_succeeded(task)
        assert task.result is not None
        sandbox = await client.sandbox(str(task.result["vm_id"]))
        emit(
            args,
            sandbox.model_dump(mode="json"),
            f"sandbox {sandbox.id} ({sandbox.name}) running on {sandbox.node} with {sandbox.driver}"
            + ("" if sandbox.isolated else " (NOT isolated)"),
        )
    elif sub == "exec":
        argv = _exec_argv(args)
        if not argv:
            raise CliError(
                "vm exec needs a command: aether vm exec ID -- CMD [ARGS...]", kind="usage"
            )
        body: dict[str, Any] = {
            "type": "vm:execute",
            "payload": {"vm_id": args.id, "command": argv[0], "args": argv[1:]},
        }
        if args.timeout is not None:
            body["timeout"] = args.timeout
        task = await _wait(client, (await client.submit_task(body)).id, (args.timeout or 600) + 60)
        _check_succeeded(task)
        assert task.result is not None
        result = task.result
        data = {k: result.get(k) for k in ("exit_code", "stdout", "stderr")}
        data.update(
            {
                "stdout_truncated": result.get("stdout_truncated", False),
                "stderr_truncated": result.get("stderr_truncated", False),
                "killed_reason": result.get("killed_reason"),
                "task_id": task.id,
            }
        )
        if args.format == "json":
            emit(args, data, "")
        else:
            sys.stdout.write(str(result.get("stdout", "")))
            sys.stderr.write(str(result.get("stderr", "")))
            sys.stdout.flush()
        code = result.get("exit_code")
        return code if isinstance(code, int) and 0 <= code < 256 and args.format != "json" else 0
    elif sub == "ls":
        shown = await client.sandboxes(include_deleted=args.all)
        emit(
            args,
            {"sandboxes": [s.model_dump(mode="json") for s in shown]},
            "\n".join(
                f"{s.id}  {s.name:<16} {s.status.value:<9} {s.node or '-':<10} {s.driver}"
                for s in shown
            )
            or "no sandboxes",
        )
    else:
        task = await _wait(
            client,
            (await client.submit_task({"type": "vm:delete", "payload": {"vm_id": args.id}})).id,
            180,
        )
        _check_succeeded(task)
        emit(
            args,
            {"vm_id": args.id, "deleted": True, "task_id": task.id},
            f"sandbox {args.id} deleted",
        )
    return 0
