"""Open sessions counted against the per-agent and per-token concurrent-session caps.

Revision ID: 0009_session_slots
Revises: 0008_egress_usage
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_session_slots"
down_revision: str | None = "0008_egress_usage"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "session_slots",
        sa.Column("slot_id", sa.String(64), nullable=False),
        sa.Column("token_id", sa.String(64), nullable=True),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slot_id", name="pk_session_slots"),
    )
    op.create_index("ix_session_slots_token_id", "session_slots", ["token_id"])
    op.create_index("ix_session_slots_principal", "session_slots", ["principal"])
    op.create_index("ix_session_slots_expires_at", "session_slots", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_session_slots_expires_at", table_name="session_slots")
    op.drop_index("ix_session_slots_principal", table_name="session_slots")
    op.drop_index("ix_session_slots_token_id", table_name="session_slots")
    op.drop_table("session_slots")
