"""snapshots and migrations

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("instance", sa.String(length=255), nullable=False),
        sa.Column("from_node", sa.String(length=128), nullable=False),
        sa.Column("to_node", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("snapshot", sa.String(length=71), nullable=True),
        sa.Column("replacement", sa.String(length=255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_migrations_app", "migrations", ["tenant_id", "app", "started_at"], unique=False
    )
    op.create_index("ix_migrations_status", "migrations", ["status"], unique=False)
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("app", sa.String(length=63), nullable=False),
        sa.Column("instance", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("tier", sa.String(length=8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_snapshots_app", "snapshots", ["tenant_id", "app", "created_at"], unique=False
    )
    op.create_index("ix_snapshots_digest", "snapshots", ["digest"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_snapshots_digest", table_name="snapshots")
    op.drop_index("ix_snapshots_app", table_name="snapshots")
    op.drop_table("snapshots")
    op.drop_index("ix_migrations_status", table_name="migrations")
    op.drop_index("ix_migrations_app", table_name="migrations")
    op.drop_table("migrations")
