"""The memory store on both records engines (SQLite with FTS5, PostgreSQL with tsvector),
vectors from the real scripted model server's ``/v1/embeddings``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from aether.agents.llm import ModelClient, ModelEndpoint
from aether.agents.memory import (
    MemoryStore,
    ModelEmbedder,
    PostgresMemoryStore,
    SqliteMemoryStore,
    cosine,
    memory_store,
    pack_vector,
    rrf,
    unpack_vector,
)
from aether.store.records import Records, open_records, upgrade_schema
from aether.store.records.schema import MemoryItemRow
from tests.support.model_server import ModelServer, embed, model_server
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.launched() as server:
        yield server


@pytest.fixture(scope="module")
def llm() -> Iterator[ModelServer]:
    with model_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def records(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Records]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
    upgrade_schema(url)
    engine, sessions = open_records(url)
    try:
        yield Records(sessions)
    finally:
        await engine.dispose()


async def _tenant(records: Records, name: str) -> str:
    return (await records.ensure_tenant(name)).id


def _dialect(store: MemoryStore) -> str:
    return "postgresql" if isinstance(store, PostgresMemoryStore) else "sqlite"


async def test_the_backend_follows_the_records_engine(records: Records) -> None:
    store = memory_store(records.sessions)
    bind = records.sessions.kw["bind"]
    expected = PostgresMemoryStore if bind.dialect.name == "postgresql" else SqliteMemoryStore
    assert type(store) is expected


async def test_full_text_ranks_more_relevant_first_and_scopes_threads(records: Records) -> None:
    store = memory_store(records.sessions)
    tenant = await _tenant(records, "acme")
    await store.write(tenant, "agt_1", None, "the invoice for March was paid late")
    await store.write(tenant, "agt_1", None, "the invoice for April was paid on time")
    await store.write(tenant, "agt_1", "th_a", "thread a: the invoice is disputed")
    await store.write(tenant, "agt_1", "th_b", "thread b: the invoice was refunded")
    await store.write(tenant, "agt_2", None, "another agent's invoice")
    shared = await store.search(tenant, "agt_1", "march invoice")
    assert [h.item.text for h in shared] == [
        "the invoice for March was paid late",  # both words
        "the invoice for April was paid on time",  # one of them
    ]
    assert shared[0].score > shared[1].score
    in_a = {h.item.text for h in await store.search(tenant, "agt_1", "invoice", "th_a")}
    assert "thread a: the invoice is disputed" in in_a
    assert not any(t.startswith(("thread b", "another")) for t in in_a)
    assert len(in_a) == 3
    assert await store.search(tenant, "agt_1", "!!! ???") == []  # no words: nothing


async def test_vectors_come_from_the_model_endpoint(records: Records, llm: ModelServer) -> None:
    store = memory_store(records.sessions)
    tenant = await _tenant(records, "acme")
    endpoint = ModelEndpoint(name="embed", base_url=llm.url, model_id="test-model")
    async with ModelClient(endpoint) as client:
        embedder = ModelEmbedder(client)
        await store.write(tenant, "agt_1", None, "green forest with tall pine trees")
        await store.write(tenant, "agt_1", None, "stock prices fell sharply", embedder=embedder)
        hits = await store.search(tenant, "agt_1", "pine forest", mode="vector", embedder=embedder)
        assert hits[0].item.text == "green forest with tall pine trees"
        expected = cosine(embed("pine forest"), embed("green forest with tall pine trees"))
        assert hits[0].vector_score == pytest.approx(expected, abs=1e-6)  # float32 kept
        assert hits[0].score > hits[1].score
        hybrid = await store.search(
            tenant, "agt_1", "pine forest", mode="hybrid", embedder=embedder
        )
        assert hybrid[0].item.text == "green forest with tall pine trees"
        assert hybrid[0].text_score is not None and hybrid[0].vector_score is not None
    listed = await store.list_items(tenant, "agt_1")
    assert all(item.embedding_model == "embed:test-model" for item in listed.items)


async def test_a_tenant_purge_takes_its_memories_and_their_index(records: Records) -> None:
    store = memory_store(records.sessions)
    gone, kept = await _tenant(records, "gone"), await _tenant(records, "kept")
    await store.write(gone, "agt_1", None, "a memory of the purged tenant")
    await store.write(kept, "agt_1", None, "a memory of the kept tenant")
    await records.purge_tenant(gone)
    async with records.sessions() as session:
        left = await session.scalar(select(func.count()).select_from(MemoryItemRow))
        if _dialect(store) == "sqlite":
            indexed = await session.scalar(text("SELECT count(*) FROM memory_fts"))
            assert indexed == 1
    assert left == 1
    assert [h.item.text for h in await store.search(kept, "agt_1", "memory tenant")] == [
        "a memory of the kept tenant"
    ]


async def test_delete_removes_it_from_search(records: Records) -> None:
    store = memory_store(records.sessions)
    tenant = await _tenant(records, "acme")
    item = await store.write(tenant, "agt_1", None, "forget me soon")
    assert not await store.delete(await _tenant(records, "other"), item.id)
    assert await store.delete(tenant, item.id)
    assert await store.search(tenant, "agt_1", "forget") == []


def test_vector_helpers() -> None:
    assert unpack_vector(pack_vector([0.5, -1.0, 2.0])) == [0.5, -1.0, 2.0]
    assert cosine([1.0, 0.0], [1.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [0.0, 1.0]) == 0.0
    assert cosine([1.0], [1.0, 0.0]) == 0.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0
    fused = rrf(["a", "b"], ["b", "c"])
    assert max(fused, key=fused.__getitem__) == "b"
