"""Initial schema: gateway tokens, sessions, statements.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ts = sa.DateTime(timezone=True)
_bigint_id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "gateway_tokens",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("created_at", _ts, nullable=False),
        sa.Column("expires_at", _ts, nullable=False),
        sa.Column("reusable", sa.Boolean(), nullable=False),
        sa.Column("used_at", _ts, nullable=True),
        sa.Column("revoked_at", _ts, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_gateway_tokens"),
    )
    op.create_index("ix_gateway_tokens_token_hash", "gateway_tokens", ["token_hash"], unique=True)

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("token_id", sa.String(36), nullable=True),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("resource", sa.String(63), nullable=False),
        sa.Column("role", sa.String(63), nullable=False),
        sa.Column("client_addr", sa.String(255), nullable=True),
        sa.Column("application_name", sa.Text(), nullable=True),
        sa.Column("intent", sa.Text(), nullable=True),
        sa.Column("started_at", _ts, nullable=False),
        sa.Column("ended_at", _ts, nullable=True),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("statements", sa.Integer(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["token_id"], ["gateway_tokens.id"], name="fk_sessions_token_id_gateway_tokens"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_started_at", "sessions", ["started_at"])
    op.create_index("ix_sessions_ended_at", "sessions", ["ended_at"])
    op.create_index("ix_sessions_token_id", "sessions", ["token_id"])

    op.create_table(
        "statements",
        sa.Column("id", _bigint_id, autoincrement=True, nullable=False),
        sa.Column("session_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sql", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("shadow_decision", sa.String(16), nullable=True),
        sa.Column("started_at", _ts, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("masked_values", sa.Integer(), nullable=False),
        sa.Column("error_sqlstate", sa.String(5), nullable=True),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_statements_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_statements"),
        sa.UniqueConstraint("session_id", "seq", name="uq_statements_session_id_seq"),
    )
    op.create_index("ix_statements_started_at", "statements", ["started_at"])
    op.create_index("ix_statements_fingerprint", "statements", ["fingerprint"])


def downgrade() -> None:
    op.drop_table("statements")
    op.drop_table("sessions")
    op.drop_table("gateway_tokens")
