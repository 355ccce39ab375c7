"""tenant descriptions

``POST /api/v1/tenants`` creates tenants; each now has a display name and a
description (empty for the ``default`` tenant and any tenant from before).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(
            sa.Column("display_name", sa.String(128), nullable=False, server_default="")
        )
        batch.add_column(sa.Column("description", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("description")
        batch.drop_column("display_name")
