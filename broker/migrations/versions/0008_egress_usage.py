"""Per-agent egress usage per resource and window (the cross-session egress budget).

Revision ID: 0008_egress_usage
Revises: 0007_token_owner
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_egress_usage"
down_revision: str | None = "0007_token_owner"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "egress_usage",
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("window_seconds", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("byte_count", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("principal", "resource", "window_seconds", "window_start", name="pk_egress_usage"),
    )
    op.create_index("ix_egress_usage_window_start", "egress_usage", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_egress_usage_window_start", table_name="egress_usage")
    op.drop_table("egress_usage")
