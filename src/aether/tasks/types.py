"""Task types: the one extension point for new kinds of work.

A task type declares its payload model, its defaults and where it may run, and
for the built-in types the result model a node's answer must fit (the server
records sandboxes and executions from it). Servers use the declaration to
validate and place a task at submission and to check its result; nodes look the
type up to run it (``aether.tasks.handlers``). To add a type::

    class ResizePayload(BaseModel):
        model_config = ConfigDict(extra="forbid", **WIRE_NAMES)
        sandbox_id: SandboxId
        memory_mb: int

    register(TaskType("vm:resize", ResizePayload, max_retry=1, timeout=60, pinned=True))

and give nodes a handler with ``@handler("vm:resize")``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aether.model.app import AppSecrets

__all__ = [
    "WIRE_NAMES",
    "AgentRunPayload",
    "AgentSandboxPayload",
    "ExecutionResult",
    "JobRunPayload",
    "JobRunResult",
    "SandboxId",
    "TaskType",
    "VmCreatePayload",
    "VmCreateResult",
    "VmDeletePayload",
    "VmDeleteResult",
    "VmExecutePayload",
    "lookup",
    "register",
    "registered",
]

#: A sandbox's id is ``sandbox_id`` in the code and ``vm_id`` on the wire (payloads,
#: results and the CLI's ``-vm-id`` flag keep the name the API has always used).
SandboxId = Annotated[str, Field(min_length=1, alias="vm_id")]
#: The model config that reads ``vm_id`` (or ``sandbox_id``) and writes ``vm_id``.
WIRE_NAMES = ConfigDict(validate_by_alias=True, validate_by_name=True, serialize_by_alias=True)


class VmCreatePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", **WIRE_NAMES)

    name: Annotated[str, Field(min_length=1, max_length=128)]
    vcpus: Annotated[int, Field(ge=1, le=64)] = 1
    memory_mb: Annotated[int, Field(ge=16, le=262_144)] = 256
    driver: str | None = None  # bwrap, process or microvm; default: the best a node has
    network: bool = False
    # set by the server, so a retried create is the same sandbox
    sandbox_id: Annotated[str | None, Field(alias="vm_id")] = None


def _secret_refs(value: dict[str, str]) -> dict[str, str]:
    """``secrets``: ENV -> the name of one of the tenant's secrets (its value is fetched by
    the node that runs the task, into the command's environment; never in the payload)."""
    return AppSecrets(env=value).env


SecretRefs = Annotated[dict[str, str], AfterValidator(_secret_refs)]


class VmExecutePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", **WIRE_NAMES)

    sandbox_id: SandboxId
    command: Annotated[str, Field(min_length=1)]
    args: list[str] = Field(default_factory=list)
    stdin: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    secrets: SecretRefs = Field(default_factory=dict)


class VmDeletePayload(BaseModel):
    model_config = ConfigDict(extra="forbid", **WIRE_NAMES)

    sandbox_id: SandboxId


class JobRunPayload(BaseModel):
    """Run a deployed app's command to completion in a fresh sandbox."""

    model_config = ConfigDict(extra="forbid")

    app: str
    command: Annotated[str, Field(min_length=1)]
    args: list[str] = Field(default_factory=list)
    version: int | None = None  # default: the app's live version
    env: dict[str, str] = Field(default_factory=dict)
    secrets: SecretRefs = Field(default_factory=dict)
    memory_mb: Annotated[int, Field(ge=16)] = 512
    network: bool = False
    # filled in by the server at submission
    digest: str | None = None
    sandbox_id: str | None = None


class VmCreateResult(BaseModel):
    model_config = ConfigDict(extra="allow", **WIRE_NAMES)

    sandbox_id: SandboxId
    driver: str = ""
    isolated: bool = True


class VmDeleteResult(BaseModel):
    model_config = ConfigDict(extra="allow", **WIRE_NAMES)

    sandbox_id: SandboxId


class ExecutionResult(BaseModel):
    """One command's run in a sandbox (``vm:execute``), recorded as an execution."""

    model_config = ConfigDict(extra="allow", **WIRE_NAMES)

    sandbox_id: SandboxId
    command: str = ""
    args: list[str] = Field(default_factory=list)
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    started_at: float = Field(ge=0, allow_inf_nan=False)
    finished_at: float = Field(ge=0, allow_inf_nan=False)


class JobRunResult(ExecutionResult):
    """A job's run: its result names the sandbox as both ``vm_id`` and ``sandbox_id``."""

    driver: str = ""


class AgentRunPayload(BaseModel):
    """Drive an agent's run (``aether.server.services.runs``): submitted by the server
    to the queue ``agent.{agent_id}``, never by a user."""

    model_config = ConfigDict(extra="forbid")

    run_id: Annotated[str, Field(min_length=1, max_length=64)]


class AgentSandboxPayload(BaseModel):
    """One ``sandbox`` tool call of an agent's run (or a stdio MCP server's), in a fresh
    sandbox."""

    model_config = ConfigDict(extra="forbid")

    run_id: Annotated[str, Field(max_length=64)] = ""  # "": no run (an MCP server's tools listed)
    step: Annotated[int, Field(ge=0)] = 0
    command: Annotated[list[str], Field(min_length=1)]
    stdin: str | None = None  # e.g. the JSON-RPC requests for a stdio MCP server
    network: bool = False
    memory_mb: Annotated[int, Field(ge=16, le=262_144)] = 512
    sandbox_id: Annotated[str, Field(min_length=1, max_length=64)]


@dataclass(frozen=True)
class TaskType:
    name: str
    payload: type[BaseModel]
    result: type[BaseModel] | None = None  # None: any JSON object
    max_retry: int = 3
    timeout: float = 300.0
    queue: str = "default"
    priority: int = 5
    pinned: bool = False  # runs on the node that holds the payload's sandbox (sandbox_id)
    internal: bool = False  # submitted by the server only (POST /api/v1/tasks refuses it)


_TYPES: dict[str, TaskType] = {}


def register(task_type: TaskType) -> TaskType:
    if task_type.name in _TYPES:
        raise ValueError(f"task type {task_type.name!r} is already registered")
    _TYPES[task_type.name] = task_type
    return task_type


def lookup(name: str) -> TaskType | None:
    return _TYPES.get(name)


def registered() -> list[str]:
    return sorted(_TYPES)


register(TaskType("vm:create", VmCreatePayload, VmCreateResult, max_retry=3, timeout=300.0))
register(
    TaskType(
        "vm:execute", VmExecutePayload, ExecutionResult, max_retry=2, timeout=600.0, pinned=True
    )
)
register(
    TaskType("vm:delete", VmDeletePayload, VmDeleteResult, max_retry=2, timeout=120.0, pinned=True)
)
register(TaskType("job:run", JobRunPayload, JobRunResult, max_retry=3, timeout=3600.0))
register(TaskType("agent:run", AgentRunPayload, max_retry=10, timeout=3600.0, internal=True))
register(TaskType("agent:sandbox", AgentSandboxPayload, max_retry=2, timeout=120.0, internal=True))
