"""Identity: access requests (who asked for which role on which resource, why, outcome).

Revision ID: 0003_identity
Revises: 0002_audit
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_identity"
down_revision: str | None = "0002_audit"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("reusable", sa.Boolean(), nullable=False),
        sa.Column("approvers", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("token_id", sa.String(36), nullable=True),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("decided_at", _ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_access_requests"),
        sa.ForeignKeyConstraint(
            ["token_id"], ["gateway_tokens.id"], name="fk_access_requests_token_id_gateway_tokens"
        ),
    )
    op.create_index("ix_access_requests_status", "access_requests", ["status"])
    op.create_index("ix_access_requests_principal", "access_requests", ["principal"])


def downgrade() -> None:
    op.drop_index("ix_access_requests_principal", table_name="access_requests")
    op.drop_index("ix_access_requests_status", table_name="access_requests")
    op.drop_table("access_requests")
