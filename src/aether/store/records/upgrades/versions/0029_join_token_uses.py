"""join token uses

``api_tokens.uses_left``: how many more joins a join token allows (``aether tokens
join --uses N``); None: any number until it expires or is revoked. A used-up token is
refused by the join (``join_token_used``), saying why.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-04 05:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("uses_left", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("uses_left")
