"""node credentials

Nodes are not tenants: a join token (role ``join``, the cluster admin's) is
exchanged for a per-node credential (role ``node``, bound to ``node_id``), which
``aether nodes revoke`` revokes; a revoked node (``nodes.revoked_at``) may not
join again until an admin allows it.

Every unbound ``node`` token was a join token: the default tenant's become
``join`` tokens; any other tenant's are revoked (a tenant may not add nodes).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DEFAULT_TENANT = "default"


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("node_id", sa.String(length=128), nullable=True))
    op.create_index("ix_api_tokens_node_id", "api_tokens", ["node_id"], unique=False)
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("revoked_at", sa.DateTime(), nullable=True))

    tokens = sa.table(
        "api_tokens",
        sa.column("tenant_id", sa.String),
        sa.column("role", sa.String),
        sa.column("revoked_at", sa.DateTime),
    )
    tenants = sa.table("tenants", sa.column("id", sa.String), sa.column("name", sa.String))
    default = sa.select(tenants.c.id).where(tenants.c.name == DEFAULT_TENANT).scalar_subquery()
    op.execute(
        tokens.update()
        .where(tokens.c.role == "node", tokens.c.tenant_id == default)
        .values(role="join")
    )
    op.execute(
        tokens.update()
        .where(tokens.c.role == "node", tokens.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC).replace(tzinfo=None))
    )


def downgrade() -> None:
    tokens = sa.table("api_tokens", sa.column("role", sa.String), sa.column("node_id", sa.String))
    op.execute(tokens.delete().where(tokens.c.node_id.is_not(None)))
    op.execute(tokens.update().where(tokens.c.role == "join").values(role="node"))
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("revoked_at")
    op.drop_index("ix_api_tokens_node_id", table_name="api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("node_id")
