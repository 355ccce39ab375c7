"""deployment request keys

A deployment row carries the Idempotency-Key of the request that created it, so a
retry of a request whose answer was lost (the server died after the row was
written) finds the deployment instead of creating another version.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 18:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("request_key", sa.String(length=255), nullable=True))
    op.create_index(
        "ux_deployments_request_key",
        "deployments",
        ["tenant_id", "request_key"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ux_deployments_request_key", table_name="deployments")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("request_key")
