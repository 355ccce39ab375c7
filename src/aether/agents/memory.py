"""Agent memory: what an agent keeps, per thread or shared by its threads, and search.

A :class:`MemoryStore` writes, lists, deletes and searches one tenant's memories of one
agent. A memory with a ``thread_id`` is that thread's; one without is the agent's,
shared by all its threads; a search naming a thread sees both, one naming none sees the
agent's shared memories only.

Search modes:

* ``text``: full text, ranked by the engine (SQLite FTS5's ``bm25()``, PostgreSQL's
  ``ts_rank_cd`` over a ``tsvector``); the query's words are OR-ed, so more of them
  and rarer ones rank higher;
* ``vector``: cosine similarity of embeddings from the caller's :class:`Embedder` (a
  model endpoint's ``/v1/embeddings``), computed here in plain Python over at most
  :data:`MAX_VECTOR_SCAN` of the newest memories in scope; memories not yet embedded
  by that model are embedded on the way (at most :data:`MAX_EMBED_PER_SEARCH`);
* ``hybrid``: reciprocal-rank fusion of the two (text alone without an embedder).

The backend follows the records database: :func:`memory_store` picks it.
"""

from __future__ import annotations

import heapq
import math
import operator
import re
import struct
import uuid
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from aether.agents.llm import ModelClient
from aether.errors import BadRequestError
from aether.store.records.base import now
from aether.store.records.schema import MemoryItemRow

__all__ = [
    "MAX_EMBED_PER_SEARCH",
    "MAX_VECTOR_SCAN",
    "Embedder",
    "MemoryHit",
    "MemoryItem",
    "MemoryPage",
    "MemoryStore",
    "ModelEmbedder",
    "PostgresMemoryStore",
    "SearchMode",
    "SqliteMemoryStore",
    "cosine",
    "memory_store",
    "pack_vector",
    "rrf",
    "unpack_vector",
]

SearchMode = Literal["text", "vector", "hybrid"]
MAX_VECTOR_SCAN = 20_000  # newest memories in scope a vector search compares
MAX_EMBED_PER_SEARCH = 512  # memories a search embeds that were not embedded yet
EMBED_BATCH = 64  # texts per /v1/embeddings call
RRF_K = 60  # reciprocal-rank fusion's constant
MAX_QUERY_WORDS = 32
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True, slots=True)
class MemoryItem:
    id: str
    tenant_id: str
    agent_id: str
    thread_id: str | None
    text: str
    metadata: dict[str, Any]
    created_at: datetime
    embedding_model: str | None  # who embedded it; None: not yet


@dataclass(frozen=True, slots=True)
class MemoryHit:
    item: MemoryItem
    score: float  # higher is better (the mode's own score; RRF's for hybrid)
    text_score: float | None = None
    vector_score: float | None = None


@dataclass(frozen=True, slots=True)
class MemoryPage:
    items: list[MemoryItem]
    cursor: int | None  # the next page's ``before``; None: the last page


class Embedder(Protocol):
    """Turns texts into vectors. ``name`` tells vectors of different models apart."""

    @property
    def name(self) -> str: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class ModelEmbedder:
    """An :class:`Embedder` over a model endpoint's ``/v1/embeddings``."""

    def __init__(self, client: ModelClient) -> None:
        self.client = client

    @property
    def name(self) -> str:
        endpoint = self.client.endpoint
        return f"{endpoint.name}:{endpoint.model_id}"[:320]

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return (await self.client.embeddings(texts)).vectors


# -- pure helpers ----------------------------------------------------------------------


def pack_vector(vector: Sequence[float]) -> bytes:
    """A vector as float32 bytes (little-endian)."""
    return struct.pack(f"<{len(vector)}f", *vector)


def unpack_vector(blob: bytes) -> list[float]:
    return list(struct.unpack(f"<{len(blob) // 4}f", blob))


def _dot(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(map(operator.mul, a, b)) if len(a) == len(b) else 0.0


def unit(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1 (the zero vector stays zero)."""
    norm = math.sqrt(_dot(vector, vector))
    return [x / norm for x in vector] if norm else list(vector)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0.0 for vectors of other lengths or of length zero."""
    return _dot(unit(a), unit(b))


def _floats(blob: bytes) -> array[float]:
    values = array("f")
    values.frombytes(blob)
    return values


def rrf(*rankings: Sequence[str], k: int = RRF_K) -> dict[str, float]:
    """Reciprocal-rank fusion: each id scores ``sum(1 / (k + rank))`` over the rankings."""
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item_id in enumerate(ranking, start=1):
            scores[item_id] = scores.get(item_id, 0.0) + 1.0 / (k + rank)
    return scores


def query_words(query: str) -> list[str]:
    """The query's words (letters and digits only: nothing the engines would parse)."""
    return _WORD.findall(query.lower())[:MAX_QUERY_WORDS]


def _item(row: MemoryItemRow) -> MemoryItem:
    return MemoryItem(
        id=row.id,
        tenant_id=row.tenant_id,
        agent_id=row.agent_id,
        thread_id=row.thread_id,
        text=row.text,
        metadata=dict(row.meta or {}),
        created_at=row.created_at,
        embedding_model=row.embedding_model,
    )


def _scoped(query: Any, tenant_id: str, agent_id: str, thread_id: str | None) -> Any:
    """Only the agent's memories a thread sees: its own and the shared ones."""
    query = query.where(MemoryItemRow.tenant_id == tenant_id, MemoryItemRow.agent_id == agent_id)
    if thread_id is None:
        return query.where(MemoryItemRow.thread_id.is_(None))
    return query.where((MemoryItemRow.thread_id == thread_id) | MemoryItemRow.thread_id.is_(None))


# -- the store -------------------------------------------------------------------------


class MemoryStore:
    """Memories in the records database; subclasses rank full text their engine's way."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def write(
        self,
        tenant_id: str,
        agent_id: str,
        thread_id: str | None,
        text: str,
        metadata: dict[str, Any] | None = None,
        *,
        embedder: Embedder | None = None,
    ) -> MemoryItem:
        """Keep ``text``; embedded at once when an embedder is given."""
        row = MemoryItemRow(
            id="mem_" + uuid.uuid4().hex,
            tenant_id=tenant_id,
            agent_id=agent_id,
            thread_id=thread_id,
            text=text,
            meta=metadata or {},
            created_at=now(),
        )
        if embedder is not None:
            (vector,) = await embedder.embed([text])
            row.embedding, row.embedding_model = pack_vector(unit(vector)), embedder.name
        async with self.sessions() as session:
            session.add(row)
            await session.commit()
        return _item(row)

    async def get(self, tenant_id: str, item_id: str) -> MemoryItem | None:
        async with self.sessions() as session:
            row = await session.scalar(
                select(MemoryItemRow).where(
                    MemoryItemRow.tenant_id == tenant_id, MemoryItemRow.id == item_id
                )
            )
        return _item(row) if row is not None else None

    async def list_items(
        self,
        tenant_id: str,
        agent_id: str,
        thread_id: str | None = None,
        *,
        before: int | None = None,
        limit: int = 100,
    ) -> MemoryPage:
        """Newest first: the thread's and the shared ones (only shared without a thread)."""
        query = _scoped(select(MemoryItemRow), tenant_id, agent_id, thread_id)
        if before is not None:
            query = query.where(MemoryItemRow.seq < before)
        query = query.order_by(MemoryItemRow.seq.desc()).limit(limit)
        async with self.sessions() as session:
            rows = (await session.scalars(query)).all()
        cursor = rows[-1].seq if len(rows) == limit else None
        return MemoryPage([_item(r) for r in rows], cursor)

    async def delete(self, tenant_id: str, item_id: str) -> bool:
        async with self.sessions() as session:
            result = await session.execute(
                delete(MemoryItemRow).where(
                    MemoryItemRow.tenant_id == tenant_id, MemoryItemRow.id == item_id
                )
            )
            await session.commit()
        return bool(getattr(result, "rowcount", 0))

    async def search(
        self,
        tenant_id: str,
        agent_id: str,
        query: str,
        thread_id: str | None = None,
        *,
        limit: int = 10,
        mode: SearchMode = "text",
        embedder: Embedder | None = None,
    ) -> list[MemoryHit]:
        """The best ``limit`` memories for ``query``, best first."""
        if mode == "vector" and embedder is None:
            raise BadRequestError(
                "vector search needs an embedding model: name one of the tenant's models "
                "(embedding_model) or configure the server's memory_embedding_model"
            )
        if mode == "text" or embedder is None:
            return await self._text_hits(tenant_id, agent_id, query, thread_id, limit)
        vector = await self._vector_hits(tenant_id, agent_id, query, thread_id, limit, embedder)
        if mode == "vector":
            return vector
        text_hits = await self._text_hits(tenant_id, agent_id, query, thread_id, limit)
        return _fuse(text_hits, vector, limit)

    # -- full text --

    async def _text_hits(
        self, tenant_id: str, agent_id: str, query: str, thread_id: str | None, limit: int
    ) -> list[MemoryHit]:
        words = query_words(query)
        if not words:
            return []
        async with self.sessions() as session:
            ranked = await self._rank_text(session, tenant_id, agent_id, words, thread_id, limit)
            return await _hits(session, ranked, "text")

    async def _rank_text(
        self,
        session: AsyncSession,
        tenant_id: str,
        agent_id: str,
        words: list[str],
        thread_id: str | None,
        limit: int,
    ) -> list[tuple[int, float]]:
        """(seq, score) of the best matches, best first (higher is better)."""
        raise NotImplementedError

    # -- vectors --

    async def _vector_hits(
        self,
        tenant_id: str,
        agent_id: str,
        query: str,
        thread_id: str | None,
        limit: int,
        embedder: Embedder,
    ) -> list[MemoryHit]:
        (wanted,) = await embedder.embed([query])
        await self._embed_missing(tenant_id, agent_id, thread_id, embedder)
        query_unit = unit(wanted)
        scan = _scoped(
            select(MemoryItemRow.seq, MemoryItemRow.embedding), tenant_id, agent_id, thread_id
        )
        scan = scan.where(MemoryItemRow.embedding_model == embedder.name)
        scan = scan.order_by(MemoryItemRow.seq.desc()).limit(MAX_VECTOR_SCAN)
        async with self.sessions() as session:
            found = (await session.execute(scan)).all()
            # kept vectors are unit length: the dot product is the cosine
            scored = ((_dot(query_unit, _floats(blob)), seq) for seq, blob in found if blob)
            best = heapq.nlargest(limit, scored)
            return await _hits(session, [(seq, score) for score, seq in best], "vector")

    async def _embed_missing(
        self, tenant_id: str, agent_id: str, thread_id: str | None, embedder: Embedder
    ) -> None:
        """Embed (newest first, bounded) the memories in scope the embedder has not."""
        query = _scoped(
            select(MemoryItemRow.seq, MemoryItemRow.text), tenant_id, agent_id, thread_id
        )
        query = query.where(
            MemoryItemRow.embedding_model.is_(None)
            | (MemoryItemRow.embedding_model != embedder.name)
        )
        query = query.order_by(MemoryItemRow.seq.desc()).limit(MAX_EMBED_PER_SEARCH)
        async with self.sessions() as session:
            missing = (await session.execute(query)).all()
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            vectors = await embedder.embed([row.text for row in batch])
            await self._keep_vectors(
                [(row.seq, v) for row, v in zip(batch, vectors, strict=True)], embedder.name
            )

    async def _keep_vectors(self, vectors: list[tuple[int, list[float]]], model: str) -> None:
        async with self.sessions() as session:
            for seq, vector in vectors:
                await session.execute(
                    update(MemoryItemRow)
                    .where(MemoryItemRow.seq == seq)
                    .values(embedding=pack_vector(unit(vector)), embedding_model=model)
                )
            await session.commit()


async def _hits(
    session: AsyncSession, ranked: list[tuple[int, float]], mode: str
) -> list[MemoryHit]:
    """The items of ``ranked`` ((seq, score), best first) as hits of ``mode``'s score; an
    item deleted meanwhile is left out."""
    if not ranked:
        return []
    rows = await session.scalars(
        select(MemoryItemRow).where(MemoryItemRow.seq.in_([seq for seq, _ in ranked]))
    )
    by_seq = {row.seq: row for row in rows}
    return [
        MemoryHit(
            _item(by_seq[seq]),
            score,
            text_score=score if mode == "text" else None,
            vector_score=score if mode == "vector" else None,
        )
        for seq, score in ranked
        if seq in by_seq
    ]


def _fuse(text_hits: list[MemoryHit], vector_hits: list[MemoryHit], limit: int) -> list[MemoryHit]:
    """Hybrid: the two rankings fused by reciprocal rank, each hit with both scores."""
    fused = rrf([h.item.id for h in text_hits], [h.item.id for h in vector_hits])
    text_of = {h.item.id: h for h in text_hits}
    vector_of = {h.item.id: h for h in vector_hits}
    best = sorted(fused.items(), key=lambda pair: pair[1], reverse=True)[:limit]
    hits = []
    for item_id, score in best:
        t, v = text_of.get(item_id), vector_of.get(item_id)
        item = (t or v).item  # type: ignore[union-attr]
        hits.append(
            MemoryHit(
                item,
                score,
                text_score=t.text_score if t else None,
                vector_score=v.vector_score if v else None,
            )
        )
    return hits


class SqliteMemoryStore(MemoryStore):
    """SQLite: the FTS5 table ``memory_fts`` (rowid = ``seq``), ranked by ``bm25()``."""

    async def _rank_text(
        self,
        session: AsyncSession,
        tenant_id: str,
        agent_id: str,
        words: list[str],
        thread_id: str | None,
        limit: int,
    ) -> list[tuple[int, float]]:
        match = " OR ".join(f'"{word}"' for word in words)
        scope = "m.thread_id IS NULL"
        if thread_id is not None:
            scope = "(m.thread_id = :thread OR m.thread_id IS NULL)"
        statement = text(
            "SELECT m.seq, bm25(memory_fts) AS rank FROM memory_fts "
            "JOIN memory_items m ON m.seq = memory_fts.rowid "
            "WHERE memory_fts MATCH :match AND m.tenant_id = :tenant AND m.agent_id = :agent "
            f"AND {scope} ORDER BY rank LIMIT :limit"
        )
        params = {
            "match": match,
            "tenant": tenant_id,
            "agent": agent_id,
            "thread": thread_id,
            "limit": limit,
        }
        rows = (await session.execute(statement, params)).all()
        return [(int(seq), -float(rank)) for seq, rank in rows]  # bm25(): lower is better


class PostgresMemoryStore(MemoryStore):
    """PostgreSQL: the generated ``text_tsv`` column (GIN index), ranked by ``ts_rank_cd``.

    Vectors are compared in Python as on SQLite (pgvector is not used yet: see
    docs/operations.md)."""

    async def _rank_text(
        self,
        session: AsyncSession,
        tenant_id: str,
        agent_id: str,
        words: list[str],
        thread_id: str | None,
        limit: int,
    ) -> list[tuple[int, float]]:
        scope = "thread_id IS NULL"
        if thread_id is not None:
            scope = "(thread_id = :thread OR thread_id IS NULL)"
        statement = text(
            "SELECT seq, ts_rank_cd(text_tsv, q) AS rank "
            "FROM memory_items, to_tsquery('english', :query) q "
            "WHERE text_tsv @@ q AND tenant_id = :tenant AND agent_id = :agent "
            f"AND {scope} ORDER BY rank DESC, seq DESC LIMIT :limit"
        )
        params = {
            "query": " | ".join(words),
            "tenant": tenant_id,
            "agent": agent_id,
            "thread": thread_id,
            "limit": limit,
        }
        rows = (await session.execute(statement, params)).all()
        return [(int(seq), float(rank)) for seq, rank in rows]


def memory_store(sessions: async_sessionmaker[AsyncSession]) -> MemoryStore:
    """The store for the records database ``sessions`` open (SQLite or PostgreSQL)."""
    bind = sessions.kw.get("bind")
    dialect = bind.dialect.name if bind is not None else "sqlite"
    if dialect == "postgresql":
        return PostgresMemoryStore(sessions)
    if dialect == "sqlite":
        return SqliteMemoryStore(sessions)
    raise ValueError(f"no memory store for a {dialect} records database")
