"""Backends for the task queue contract suite.

``queue`` runs each test against every backend in ``BACKENDS``: ``sql`` on a fresh
SQLite records database, ``postgres`` (the same ``SqlTaskQueue``, whose claims use
``FOR UPDATE SKIP LOCKED`` there) on a fresh database of a real PostgreSQL that
this module starts once per session, ``redis`` on a real ``redis-server`` that
this module starts once per session (and flushes before every test). To add a backend, add
its name and a branch in ``_open``; no test changes.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from aether.store.records import open_records, upgrade_schema
from aether.store.records.schema import Tenant
from aether.tasks.queue.base import Backoff, TaskQueue, utc
from aether.tasks.queue.redis import RedisTaskQueue
from aether.tasks.queue.sql import SqlTaskQueue
from tests.support.postgres import PostgresServer
from tests.support.redis import redis_server

BACKENDS = ["sql", "postgres", "redis"]
TENANTS = ("acme", "globex")  # the tenants the contract tests use


class RecordingBackoff:
    """The default backoff, seeded, remembering every delay it gave (attempts, delay)."""

    def __init__(self, seed: int = 7) -> None:
        self.inner = Backoff(seed=seed)
        self.calls: list[tuple[int, float]] = []

    def __call__(self, attempts: int) -> float:
        delay = self.inner(attempts)
        self.calls.append((attempts, delay))
        return delay


@pytest.fixture(scope="session")
def records_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated records database per session; each test copies it (migrating is slow)."""
    path = tmp_path_factory.mktemp("records") / "records.db"
    upgrade_schema(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[tuple[PostgresServer, str]]:
    """A real PostgreSQL for the session and a migrated database each test copies."""
    with PostgresServer.launched() as server:
        upgrade_schema(server.create_database("records_template"))
        yield server, "records_template"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server on a free loopback port, without persistence, for the session."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def backoff() -> RecordingBackoff:
    return RecordingBackoff()


async def _sql(url: str, backoff: RecordingBackoff) -> tuple[SqlTaskQueue, AsyncEngine]:
    engine, sessions = open_records(url)
    async with sessions() as session:
        session.add_all(Tenant(id=t, name=t, created_at=utc(time.time())) for t in TENANTS)
        await session.commit()
    return SqlTaskQueue(sessions, backoff=backoff), engine


@pytest.fixture(params=BACKENDS)
async def queue(
    request: pytest.FixtureRequest, tmp_path: Path, backoff: RecordingBackoff
) -> AsyncIterator[TaskQueue]:
    if request.param == "sql":
        path = tmp_path / "records.db"
        shutil.copyfile(request.getfixturevalue("records_template"), path)
        opened, engine = await _sql(f"sqlite:///{path}", backoff)
        try:
            yield opened
        finally:
            await opened.close()
            await engine.dispose()
    elif request.param == "postgres":
        server, template = request.getfixturevalue("postgres_template")
        url = server.create_database(template=template)
        opened, engine = await _sql(url, backoff)
        try:
            yield opened
        finally:
            await opened.close()
            await engine.dispose()
            server.drop_database(make_url(url).database or "")
    elif request.param == "redis":
        redis_queue = RedisTaskQueue(request.getfixturevalue("redis_url"), backoff=backoff)
        await redis_queue.redis.flushall()
        try:
            yield redis_queue
        finally:
            await redis_queue.close()
    else:
        raise AssertionError(f"unknown backend {request.param!r}")
