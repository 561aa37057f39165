"""Outstanding upstream credential leases, for revocation by the reaper.

Revision ID: 0004_leases
Revises: 0003_identity
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_leases"
down_revision: str | None = "0003_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("lease_id", sa.String(255), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("issued_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("revoked_at", _ts, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("lease_id", name="pk_leases"),
    )
    op.create_index("ix_leases_revoked_at", "leases", ["revoked_at"])
    op.create_index("ix_leases_session_id", "leases", ["session_id"])


def downgrade() -> None:
    op.drop_index("ix_leases_session_id", table_name="leases")
    op.drop_index("ix_leases_revoked_at", table_name="leases")
    op.drop_table("leases")
