"""users and memberships

``users`` are accounts (people with a password and/or an OpenID Connect identity, and
service accounts that only hold tokens); ``memberships`` give an account a role in a
tenant; ``oidc_logins`` hold OpenID Connect sign-ins under way. ``api_tokens`` gain
the account they belong to and an optional expiry.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("display_name", sa.String(length=128), server_default="", nullable=False),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("totp_secret", sa.String(length=64), nullable=True),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("oidc_issuer", sa.String(length=512), nullable=True),
        sa.Column("oidc_subject", sa.String(length=256), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("disabled_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("oidc_issuer", "oidc_subject"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"]),
        sa.PrimaryKeyConstraint("user_id", "tenant_id"),
    )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("code_verifier", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=128), nullable=True),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("cli_port", sa.Integer(), nullable=True),
        sa.Column("cli_challenge", sa.String(length=128), nullable=True),
        sa.Column("next_url", sa.String(length=2048), server_default="", nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("user_id", sa.String(length=64), nullable=True),
        sa.Column("exchange_hash", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("state_hash"),
    )
    op.create_index("ix_oidc_logins_exchange_hash", "oidc_logins", ["exchange_hash"])
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("user_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch.create_foreign_key("fk_api_tokens_user_id", "users", ["user_id"], ["id"])
        batch.create_index("ix_api_tokens_user_id", ["user_id"])


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_index("ix_api_tokens_user_id")
        batch.drop_constraint("fk_api_tokens_user_id", type_="foreignkey")
        batch.drop_column("expires_at")
        batch.drop_column("user_id")
    op.drop_index("ix_oidc_logins_exchange_hash", table_name="oidc_logins")
    op.drop_table("oidc_logins")
    op.drop_table("memberships")
    op.drop_table("users")
