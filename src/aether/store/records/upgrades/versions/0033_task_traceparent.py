"""task traceparent

``tasks.traceparent``: the W3C ``traceparent`` of the request that submitted the
task (when tracing is on, ``AETHER_OTLP_ENDPOINT``), so its claim and its run on a
node join that trace, and a sandboxed command gets it as ``TRACEPARENT``.

Revision ID: 0033
Revises: 0029
Create Date: 2026-12-04 11:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0029"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("traceparent")
