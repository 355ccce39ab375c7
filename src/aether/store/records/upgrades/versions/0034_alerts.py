"""alerts

``alerts``: each alert's state (rule + labels), its notifier's attempts and its
runbook's output; ``alert_silences``: silences (matchers and an end time).

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-04 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("fingerprint", sa.String(32), primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("fired_at", sa.Double(), nullable=True),
        sa.Column("resolved_at", sa.Double(), nullable=True),
        sa.Column("silenced", sa.Boolean(), nullable=False),
        sa.Column("notify", sa.JSON(), nullable=False),
        sa.Column("runbook_task", sa.String(64), nullable=True),
        sa.Column("runbook_output", sa.Text(), nullable=True),
    )
    op.create_index("ix_alerts_tenant", "alerts", ["tenant"])
    op.create_table(
        "alert_silences",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=True),
        sa.Column("matchers", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.Double(), nullable=False),
        sa.Column("ends_at", sa.Double(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_silences")
    op.drop_index("ix_alerts_tenant", table_name="alerts")
    op.drop_table("alerts")
