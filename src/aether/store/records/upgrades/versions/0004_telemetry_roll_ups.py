"""telemetry roll-ups

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("minute", sa.Double(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("avg_values", sa.JSON(), nullable=False),
        sa.Column("max_values", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("kind", "name", "minute"),
    )
    op.create_index("ix_metric_rollups_minute", "metric_rollups", ["minute"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_metric_rollups_minute", table_name="metric_rollups")
    op.drop_table("metric_rollups")
