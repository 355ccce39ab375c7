"""A claim reads the index of ready tasks only, never the queue's finished history."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import or_, select

from aether.store.records import open_records, upgrade_schema
from aether.tasks.queue.sql import T, _ready


async def test_the_claim_query_searches_the_ready_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    upgrade_schema(url)  # the migrations' index, as every server has it
    engine, _ = open_records(url)
    pick = (
        select(T.c.id)
        .where(
            _ready(time.time()),
            T.c.queue.in_(["default"]),
            or_(T.c.node.is_(None), T.c.node == "n1"),
            or_(T.c.driver.is_(None), T.c.driver.in_(["bwrap"])),
        )
        .order_by(T.c.priority.desc(), T.c.seq.asc())
        .limit(8)
    )
    sql = str(pick.compile(engine.sync_engine, compile_kwargs={"literal_binds": True}))
    try:
        async with engine.connect() as conn:
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql)
            plan = [str(row._mapping["detail"]) for row in rows]
    finally:
        await engine.dispose()
    # one search of the partial index, in its order: no scan, no sort of the history
    assert plan == ["SEARCH tasks USING INDEX ix_tasks_ready (queue=?)"], plan
