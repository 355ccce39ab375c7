"""tasks ready index

``ix_tasks_ready`` (queue, priority DESC, seq) over ready tasks only and
``ix_tasks_active`` (lease_expires_at) over active ones replace ``ix_tasks_claim``,
which covered every task ever submitted: a claim walked the queue's whole history.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-03 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

_READY = "state IN ('pending', 'scheduled', 'retry')"
_ACTIVE = "state = 'active'"


def upgrade() -> None:
    op.drop_index("ix_tasks_claim", table_name="tasks")
    op.create_index(
        "ix_tasks_ready",
        "tasks",
        ["queue", sa.text("priority DESC"), "seq"],
        sqlite_where=sa.text(_READY),
        postgresql_where=sa.text(_READY),
    )
    op.create_index(
        "ix_tasks_active",
        "tasks",
        ["lease_expires_at"],
        sqlite_where=sa.text(_ACTIVE),
        postgresql_where=sa.text(_ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_tasks_active", table_name="tasks")
    op.drop_index("ix_tasks_ready", table_name="tasks")
    op.create_index("ix_tasks_claim", "tasks", ["queue", "state", "priority", "seq"])
