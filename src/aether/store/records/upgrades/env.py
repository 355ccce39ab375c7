"""Alembic environment: runs migrations on the connection Aether hands it."""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

from aether.store.records.schema import Base

config = context.config
target_metadata = Base.metadata

# Made by migrations in SQL for one engine, with no model to compare them with: agent
# memory's full-text indexes (0021: SQLite's FTS5 table and the shadow tables FTS5 keeps
# beside it, PostgreSQL's generated tsvector column and its GIN index). SQLAlchemy has no
# type for an FTS5 table nor a portable one for a generated tsvector, so the comparison
# of models and migrations (``alembic check``) must not take them for strays to drop.
SQL_ONLY_TABLE_PREFIX = "memory_fts"
SQL_ONLY_COLUMNS = frozenset({("memory_items", "text_tsv")})
# Also the claim index over ready tasks (0026): its ``priority DESC`` is an expression
# autogenerate cannot compare (see ``TASKS_READY`` in schema.py).
SQL_ONLY_INDEXES = frozenset({"ix_memory_items_tsv", "ix_tasks_ready"})


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """False for the SQL-only objects above, found in the database with no model."""
    if not reflected or compare_to is not None or name is None:
        return True
    if type_ == "table":
        return not name.startswith(SQL_ONLY_TABLE_PREFIX)
    if type_ == "column":
        return (obj.table.name, name) not in SQL_ONLY_COLUMNS
    if type_ == "index":
        return name not in SQL_ONLY_INDEXES
    return True


_OPTIONS: dict[str, Any] = {
    "target_metadata": target_metadata,
    "render_as_batch": True,
    "include_object": include_object,
}


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), **_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as conn:
        context.configure(connection=conn, **_OPTIONS)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
