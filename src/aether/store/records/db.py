"""Opening the records database and bringing its schema up to date."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession

__all__ = ["alembic_config", "open_records", "sync_url", "upgrade_schema"]

#: Alembic's environment and the schema versions (``upgrades/versions/NNNN_*.py``).
SCHEMA_VERSIONS = Path(__file__).resolve().parent / "upgrades"


def sync_url(url: str) -> str:
    """The synchronous driver URL Alembic uses for an async records URL."""
    parsed = make_url(url)
    driver = {"sqlite+aiosqlite": "sqlite", "postgresql+asyncpg": "postgresql+psycopg"}.get(
        parsed.drivername, parsed.drivername
    )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def async_url(url: str) -> str:
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}.get(
        parsed.drivername, parsed.drivername
    )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCHEMA_VERSIONS))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


SCHEMA_LOCK = 0x4165_7468_6572  # "Aether": the PostgreSQL advisory lock key of upgrade_schema()


def upgrade_schema(url: str) -> None:
    """Upgrade the schema to the newest version (Alembic ``upgrade head``; idempotent)."""
    postgres = make_url(url).get_backend_name() == "postgresql"
    engine = create_engine(sync_url(url), connect_args={"connect_timeout": 10} if postgres else {})
    try:
        with engine.begin() as connection:
            if postgres:
                # servers starting together on one database take turns: the others
                # wait here, then find the schema at head (released at commit)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


# PostgreSQL (psycopg 3): when the server goes away, pooled connections are dead.
# pre-ping replaces them on checkout, so the first request after PostgreSQL comes
# back succeeds; a bounded connect timeout and pool wait turn an outage into a
# quick OperationalError / TimeoutError (a 503 envelope) rather than a hang.
POSTGRES_ENGINE_OPTIONS: dict[str, object] = {
    "pool_pre_ping": True,
    "pool_size": 10,
    "max_overflow": 20,
    "pool_timeout": 10,
    "pool_recycle": 1800,
    "connect_args": {
        "connect_timeout": 5,
        "application_name": "aether",
        # a peer that vanished without closing (host down, network cut) is noticed
        # in about a minute instead of the kernel's two hours
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    },
}


def open_records(url: str) -> tuple[AsyncEngine, async_sessionmaker[AsyncSession]]:
    """An async engine and session factory; call ``upgrade_schema`` first."""
    kwargs: dict[str, object] = {}
    backend = make_url(url).get_backend_name()
    sqlite = backend == "sqlite"
    if sqlite:
        kwargs["connect_args"] = {"timeout": 30}
    elif backend == "postgresql":
        kwargs.update(POSTGRES_ENGINE_OPTIONS)
    engine = create_async_engine(async_url(url), **kwargs)
    if sqlite:
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine, async_sessionmaker(engine, expire_on_commit=False)


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    """WAL: readers never wait for the writer, and commits do not fsync each time.

    In the default rollback journal, concurrent sessions (API requests, task
    claims, the leader) spent most of their time in SQLite's busy handler.
    """
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
