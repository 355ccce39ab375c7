"""agent memory

``memory_items`` holds an agent's memories (per thread, or shared by its threads when
``thread_id`` is NULL) and, once embedded, their vectors as float32 bytes. The full-text
indexes are not models, so they are made here for their engine only:

* SQLite: the FTS5 table ``memory_fts`` (porter stemming, ``bm25()`` ranking) whose rowid
  is ``memory_items.seq``, kept in step by triggers (a tenant purge's deletes too);
* PostgreSQL: the generated column ``text_tsv`` (``to_tsvector('english', text)``) and
  its GIN index, ranked with ``ts_rank_cd``.

``upgrades/env.py`` leaves these out of the model comparison (``SQL_ONLY``).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-03 14:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_SQLITE_UP = (
    "CREATE VIRTUAL TABLE memory_fts USING fts5(text, tokenize='porter unicode61')",
    "CREATE TRIGGER memory_fts_insert AFTER INSERT ON memory_items BEGIN "
    "INSERT INTO memory_fts(rowid, text) VALUES (new.seq, new.text); END",
    "CREATE TRIGGER memory_fts_delete AFTER DELETE ON memory_items BEGIN "
    "DELETE FROM memory_fts WHERE rowid = old.seq; END",
    "CREATE TRIGGER memory_fts_update AFTER UPDATE OF text ON memory_items BEGIN "
    "UPDATE memory_fts SET text = new.text WHERE rowid = old.seq; END",
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS memory_fts_update",
    "DROP TRIGGER IF EXISTS memory_fts_delete",
    "DROP TRIGGER IF EXISTS memory_fts_insert",
    "DROP TABLE IF EXISTS memory_fts",
)
_POSTGRES_UP = (
    "ALTER TABLE memory_items ADD COLUMN text_tsv tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_memory_items_tsv ON memory_items USING gin (text_tsv)",
)
_POSTGRES_DOWN = (
    "DROP INDEX IF EXISTS ix_memory_items_tsv",
    "ALTER TABLE memory_items DROP COLUMN IF EXISTS text_tsv",
)


def _run(statements: tuple[str, ...]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    op.create_table(
        "memory_items",
        sa.Column("seq", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=True),
        sa.Column("embedding_model", sa.String(length=320), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index(
        "ix_memory_items_scope",
        "memory_items",
        ["tenant_id", "agent_id", "thread_id"],
        unique=False,
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(_SQLITE_UP)
    elif dialect == "postgresql":
        _run(_POSTGRES_UP)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(_SQLITE_DOWN)
    elif dialect == "postgresql":
        _run(_POSTGRES_DOWN)
    op.drop_index("ix_memory_items_scope", table_name="memory_items")
    op.drop_table("memory_items")
