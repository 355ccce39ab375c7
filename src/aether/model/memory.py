"""The API's bodies of ``/api/v1/memory``: an agent's memories and searches of them."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from aether.model.time import Timestamp

__all__ = [
    "MEMORY_ID_PATTERN",
    "MemoryDeletedOut",
    "MemoryHitOut",
    "MemoryIn",
    "MemoryOut",
    "MemoryPageOut",
    "SearchMode",
]

#: an agent's or a thread's id: opaque (``agt_…``), letters, digits and ``._:-``
MEMORY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
MAX_MEMORY_CHARS = 32_768
SearchMode = Literal["text", "vector", "hybrid"]


class MemoryIn(BaseModel):
    agent_id: Annotated[str, Field(pattern=MEMORY_ID_PATTERN)]
    #: the thread's own memory; without it, the agent's, shared by all its threads
    thread_id: Annotated[str | None, Field(pattern=MEMORY_ID_PATTERN)] = None
    text: Annotated[str, Field(min_length=1, max_length=MAX_MEMORY_CHARS)]
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: a model of the tenant's catalog to embed the text with now (else at first search)
    embedding_model: Annotated[str | None, Field(max_length=63)] = None


class MemoryOut(BaseModel):
    id: str
    agent_id: str
    thread_id: str | None
    text: str
    metadata: dict[str, Any]
    embedded: bool  # has a vector (of some model)
    created_at: Timestamp


class MemoryHitOut(MemoryOut):
    score: float  # higher is better: the mode's own (RRF's for hybrid)
    text_score: float | None  # bm25 (SQLite, negated) or ts_rank_cd (PostgreSQL)
    vector_score: float | None  # cosine similarity


class MemoryPageOut(BaseModel):
    items: list[MemoryOut]
    cursor: int | None  # the next page: ``before=cursor``; None: the last page


class MemoryDeletedOut(BaseModel):
    id: str
    deleted: bool = True
