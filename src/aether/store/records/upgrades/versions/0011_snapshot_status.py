"""snapshot status and taken_at

``snapshots.status`` tells a checkpoint (``stored``) from the newer state a
returning node kept (``orphaned``) and an orphan an operator brought back
(``restored``); ``snapshots.taken_at`` is when the state was last known to be
the snapshot's (a periodic checkpoint that found it unchanged moves it on).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 07:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="stored")
        )
        batch.add_column(sa.Column("taken_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("snapshots") as batch:
        batch.drop_column("taken_at")
        batch.drop_column("status")
