"""app deletion

``aether apps rm`` marks the app's row deleted (``apps.deleted_at``) instead of
removing it: its deployments and their events stay in the records. Deploying
the name again clears the mark and starts the app's new life (``created_at``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.add_column(sa.Column("deleted_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("apps") as batch:
        batch.drop_column("deleted_at")
