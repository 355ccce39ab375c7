"""Alembic migrations: they build the schema the models describe, both ways, on every engine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine, inspect

from aether.store.records.db import alembic_config, sync_url, upgrade_schema
from tests.support.postgres import PostgresServer

ENGINES = ["sqlite", "postgresql"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer.launched() as server:
        yield server


@pytest.fixture(params=ENGINES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty records database on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'records.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database()


def _tables(url: str) -> set[str]:
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrations_match_the_models(url: str) -> None:
    upgrade_schema(url)
    upgrade_schema(url)  # idempotent
    command.check(alembic_config(url))  # raises if the models and the migrations differ


def test_downgrade_to_base_and_up_again(url: str) -> None:
    upgrade_schema(url)
    config = alembic_config(url)
    command.downgrade(config, "base")
    assert _tables(url) <= {"alembic_version"}
    upgrade_schema(url)
    assert {"apps", "deployments", "public_keys", "api_tokens"} <= _tables(url)
    command.check(alembic_config(url))


_MIGRATE_ON_GO = """
import sys
from aether.store.records import upgrade_schema
print("ready", flush=True)
sys.stdin.readline()
upgrade_schema(sys.argv[1])
"""


def test_servers_starting_together_migrate_one_at_a_time(postgres: PostgresServer) -> None:
    """Three HA servers start on one empty PostgreSQL, each running ``upgrade_schema`` at once."""
    url = postgres.create_database()
    starts = [
        subprocess.Popen(
            [sys.executable, "-c", _MIGRATE_ON_GO, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(3)
    ]
    for process in starts:  # everything imported: the migrations themselves overlap
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
    for process in starts:
        assert process.stdin is not None
        process.stdin.write(b"go\n")
        process.stdin.flush()
    for process in starts:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output.decode(errors="replace")
    command.check(alembic_config(url))
