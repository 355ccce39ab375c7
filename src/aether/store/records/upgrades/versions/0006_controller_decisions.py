"""controller decisions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "decisions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=True),
        sa.Column("action", sa.JSON(), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_decisions_target", "decisions", ["target", "id"], unique=False)
    op.create_index("ix_decisions_ts", "decisions", ["ts"], unique=False)
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("drain_reason", sa.Text(), server_default="", nullable=False))
        batch_op.add_column(
            sa.Column("drained_by", sa.String(length=16), server_default="", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_column("drained_by")
        batch_op.drop_column("drain_reason")
    op.drop_index("ix_decisions_ts", table_name="decisions")
    op.drop_index("ix_decisions_target", table_name="decisions")
    op.drop_table("decisions")
