"""Everything a request or a leader loop needs, built once at server start."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Request

from aether.artifacts import LocalArtifactRegistry
from aether.server.settings import ServerSettings
from aether.store.base import StateStore
from aether.store.records import Records

if TYPE_CHECKING:
    from aether.server.logstore import LogStore

__all__ = ["ServerContext", "get_context"]


@dataclass
class ServerContext:
    settings: ServerSettings
    server_id: str
    store: StateStore
    records: Records
    registry: LocalArtifactRegistry
    logs: LogStore
    leader_id: str | None = None
    background: list[object] = field(default_factory=list)


def get_context(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx
