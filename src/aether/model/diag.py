"""The diagnostics bundle's node↔server messages and stored record (pure).

A node's own part of a bundle (:class:`NodePartIn`, ``POST /nodes/{node}/diag/{id}``)
and an open request as every server sees it (:class:`DiagRequestRecord`,
``diag/{id}`` in the state store). The size limits live here so that the model, the
server and ``ops.diag_bundle`` agree on them.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from aether.model.versioned import Versioned

__all__ = ["MAX_FILE", "MAX_NODE_FILES", "MAX_NODE_PART", "DiagRequestRecord", "NodePartIn"]

MAX_FILE = 4 * 1024 * 1024  # per file in the bundle
MAX_NODE_PART = 8 * 1024 * 1024  # what one node may send
MAX_NODE_FILES = 16  # files in one node's part


class NodePartIn(Versioned):
    """A node's own part of a bundle its heartbeat answer asked for: file name → text."""

    SCHEMA_NAME: ClassVar[str] = "diag_part"

    files: dict[str, Annotated[str, Field(max_length=MAX_FILE)]] = Field(max_length=MAX_NODE_FILES)


class DiagRequestRecord(Versioned):
    """``diag/{id}``: an open bundle request — since when, the nodes whose parts it
    still waits for, and the builder's node port URL the parts go to."""

    SCHEMA_NAME: ClassVar[str] = "diag_request"

    since: float
    nodes: list[str]
    to: str | None = None
