"""artifact provenance

``artifacts.provenance`` (the DSSE envelope of the build's in-toto statement),
``artifacts.provenance_by`` (the fingerprint of the app key that verified it) and
``apps.require_provenance``.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-04 04:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("require_provenance", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provenance", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("provenance_by", sa.String(length=71), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("artifacts", schema=None) as batch_op:
        batch_op.drop_column("provenance_by")
        batch_op.drop_column("provenance")
    with op.batch_alter_table("apps", schema=None) as batch_op:
        batch_op.drop_column("require_provenance")
