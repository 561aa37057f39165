"""Approvals (access requests and parked statements), their votes, and the principal directory.

Revision ID: 0006_approvals
Revises: 0005_results
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_approvals"
down_revision: str | None = "0005_results"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("requester", sa.String(255), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("requester_groups", sa.JSON(), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("role", sa.String(63), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("session_id", sa.String(36), nullable=True),
        sa.Column("sql", sa.Text(), nullable=True),
        sa.Column("statement_hash", sa.String(64), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(255), nullable=True),
        sa.Column("risk", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("approver_groups", sa.JSON(), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("fingerprint_window_seconds", sa.Integer(), nullable=False),
        sa.Column("break_glass", sa.Boolean(), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("decided_at", _ts, nullable=True),
        sa.Column("decided_by", sa.JSON(), nullable=False),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("scope", sa.String(16), nullable=True),
        sa.Column("covers_until", _ts, nullable=True),
        sa.Column("used", sa.Integer(), nullable=False),
        sa.Column("slack_channel", sa.String(64), nullable=True),
        sa.Column("slack_ts", sa.String(32), nullable=True),
        sa.Column("reminded_at", _ts, nullable=True),
        sa.Column("escalated_at", _ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_approvals"),
    )
    op.create_index("ix_approvals_status", "approvals", ["status"])
    op.create_index("ix_approvals_session", "approvals", ["session_id", "statement_hash"])
    op.create_index("ix_approvals_fingerprint", "approvals", ["requester", "fingerprint"])
    op.create_table(
        "approval_votes",
        sa.Column("approval_id", sa.String(36), nullable=False),
        sa.Column("voter", sa.String(255), nullable=False),
        sa.Column("choice", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("break_glass", sa.Boolean(), nullable=False),
        sa.Column("via", sa.String(16), nullable=False),
        sa.Column("at", _ts, nullable=False),
        sa.ForeignKeyConstraint(["approval_id"], ["approvals.id"], name="fk_approval_votes_approval_id_approvals"),
        sa.PrimaryKeyConstraint("approval_id", "voter", name="pk_approval_votes"),
    )
    op.create_table(
        "principals",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("last_seen", _ts, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_principals"),
    )
    op.create_index("ix_principals_email", "principals", ["email"])


def downgrade() -> None:
    op.drop_index("ix_principals_email", table_name="principals")
    op.drop_table("principals")
    op.drop_table("approval_votes")
    op.drop_index("ix_approvals_fingerprint", table_name="approvals")
    op.drop_index("ix_approvals_session", table_name="approvals")
    op.drop_index("ix_approvals_status", table_name="approvals")
    op.drop_table("approvals")
