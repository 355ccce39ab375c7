"""agent models

``agent_models`` is each tenant's catalog of model endpoints (``model://NAME``): an
OpenAI-compatible base URL, the model id, its context window and prices, and its
API key sealed with the server's secrets key (never in plain text).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 13:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_models",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("base_url", sa.String(length=2048), nullable=False),
        sa.Column("model_id", sa.String(length=256), nullable=False),
        sa.Column("context_window", sa.Integer(), nullable=False),
        sa.Column("price_in_per_1k", sa.Double(), nullable=False),
        sa.Column("price_out_per_1k", sa.Double(), nullable=False),
        sa.Column("api_key", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant_id", "name"),
    )


def downgrade() -> None:
    op.drop_table("agent_models")
