"""The audit trail's records on SQLite and a real PostgreSQL: appends chain, verify
finds an altered, a removed or a reordered row, concurrent appends keep the chain,
and trimming keeps it verifiable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from aether.store.records import Records, open_records, upgrade_schema
from aether.store.records.audit import GENESIS, AuditEntry
from tests.support.postgres import PostgresServer


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.launched() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
async def opened(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Records, AsyncEngine]]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.create_database()
    await asyncio.to_thread(upgrade_schema, url)
    engine, sessions = open_records(url)
    try:
        yield Records(sessions), engine
    finally:
        await engine.dispose()
        if request.param == "postgresql":
            server.drop_database(make_url(url).database or "")


def entry(n: int, *, ts: float = 1000.0, tenant_id: str | None = "t1") -> AuditEntry:
    return AuditEntry(
        ts=ts + n,
        actor_kind="token",
        actor=f"tok{n}",
        role="admin",
        action="POST /apps/{app}/scale",
        target=f"apps/web{n}/scale",
        outcome="ok",
        status=200,
        tenant_id=tenant_id,
        tenant="default",
        source="127.0.0.1",
        trace_id=f"trace{n}",
    )


async def fill(records: Records, count: int) -> list[int]:
    return [(await records.append_audit(entry(n))).id for n in range(count)]


async def test_appends_chain_each_row_to_the_one_before(
    opened: tuple[Records, AsyncEngine],
) -> None:
    records, _ = opened
    ids = await fill(records, 3)
    rows = list(reversed(await records.list_audit(None)))
    assert [r.id for r in rows] == ids
    assert rows[0].prev_hash == GENESIS
    assert [r.prev_hash for r in rows[1:]] == [r.hash for r in rows[:-1]]
    verdict = await records.verify_audit()
    assert verdict.ok and verdict.checked == 3 and verdict.head_id == ids[-1]


async def test_verify_names_an_altered_row(opened: tuple[Records, AsyncEngine]) -> None:
    records, engine = opened
    ids = await fill(records, 4)
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE audit_events SET outcome = 'refused' WHERE id = :id"), {"id": ids[2]}
        )
    verdict = await records.verify_audit()
    assert not verdict.ok
    assert verdict.first_bad == ids[2]
    assert "altered" in verdict.reason


async def test_verify_names_the_row_after_a_removed_one(
    opened: tuple[Records, AsyncEngine],
) -> None:
    records, engine = opened
    ids = await fill(records, 4)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[1]})
    verdict = await records.verify_audit()
    assert (verdict.ok, verdict.first_bad) == (False, ids[2])
    assert "removed" in verdict.reason


async def test_verify_notices_removed_newest_rows(opened: tuple[Records, AsyncEngine]) -> None:
    records, engine = opened
    ids = await fill(records, 3)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[2]})
    verdict = await records.verify_audit()
    assert (verdict.ok, verdict.first_bad) == (False, ids[2])


async def test_verify_notices_reordered_rows(opened: tuple[Records, AsyncEngine]) -> None:
    records, engine = opened
    ids = await fill(records, 4)
    swap = "UPDATE audit_events SET id = :new WHERE id = :old"
    async with engine.begin() as conn:  # swap rows 2 and 3 (contents and hashes move along)
        await conn.execute(text(swap), {"new": 1_000_000, "old": ids[1]})
        await conn.execute(text(swap), {"new": ids[1], "old": ids[2]})
        await conn.execute(text(swap), {"new": ids[2], "old": 1_000_000})
    verdict = await records.verify_audit()
    assert (verdict.ok, verdict.first_bad) == (False, ids[1])


async def test_concurrent_appends_keep_one_chain(opened: tuple[Records, AsyncEngine]) -> None:
    records, _ = opened
    await asyncio.gather(*(records.append_audit(entry(n)) for n in range(20)))
    verdict = await records.verify_audit()
    assert verdict.ok and verdict.checked == 20


async def test_trimming_keeps_the_chain_verifiable(opened: tuple[Records, AsyncEngine]) -> None:
    records, _ = opened
    ids = await fill(records, 5)  # ts 1000 .. 1004
    assert await records.trim_audit_before(1002.5) == 3
    verdict = await records.verify_audit()
    assert verdict.ok and verdict.checked == 2 and verdict.anchor_id == ids[2]
    await records.append_audit(entry(9))
    assert (await records.verify_audit()).ok
    assert await records.trim_audit_before(5000.0) == 3  # everything: still intact
    assert (await records.verify_audit()).ok
    await records.append_audit(entry(10))
    assert (await records.verify_audit()).checked == 1


async def test_filters_scope_and_pages(opened: tuple[Records, AsyncEngine]) -> None:
    records, _ = opened
    for n in range(4):
        await records.append_audit(entry(n, tenant_id="t1" if n % 2 else "t2"))
    assert [r.actor for r in await records.list_audit("t1")] == ["tok3", "tok1"]
    assert [r.actor for r in await records.list_audit(None, target="apps/web2")] == ["tok2"]
    assert [r.actor for r in await records.list_audit(None, since=1001, until=1003)] == [
        "tok2",
        "tok1",
    ]
    first = await records.list_audit(None, limit=2)
    older = await records.list_audit(None, before=first[-1].id, limit=2)
    assert [r.actor for r in [*first, *older]] == ["tok3", "tok2", "tok1", "tok0"]
    newer = await records.list_audit(None, after=older[0].id)
    assert [r.actor for r in newer] == ["tok2", "tok3"]
