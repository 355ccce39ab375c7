"""signals and risk assessments

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 14:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "risk_assessments",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Double(), nullable=False),
        sa.Column("root_cause", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_risk_assessments_node", "risk_assessments", ["node", "id"], unique=False)
    op.create_index("ix_risk_assessments_ts", "risk_assessments", ["ts"], unique=False)
    op.create_table(
        "signals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_signals_created_at", "signals", ["created_at"], unique=False)
    op.create_index("ix_signals_node", "signals", ["node", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_signals_node", table_name="signals")
    op.drop_index("ix_signals_created_at", table_name="signals")
    op.drop_table("signals")
    op.drop_index("ix_risk_assessments_ts", table_name="risk_assessments")
    op.drop_index("ix_risk_assessments_node", table_name="risk_assessments")
    op.drop_table("risk_assessments")
