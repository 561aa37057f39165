"""Slack messages per approval and kind, claimed before posting; replaces approvals.slack_*.

The poster used to find an earlier prompt in the channel's history (`conversations.history`,
which needs `channels:history`); it now keeps each message's channel and ts here. Prompts
recorded in `approvals.slack_channel` / `slack_ts` are carried over.

Revision ID: 0010_slack_messages
Revises: 0009_session_slots
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_slack_messages"
down_revision: str | None = "0009_session_slots"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slack_messages",
        sa.Column("approval_id", sa.String(36), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("ts", sa.String(32), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["approval_id"], ["approvals.id"], name="fk_slack_messages_approval_id_approvals"),
        sa.PrimaryKeyConstraint("approval_id", "kind", name="pk_slack_messages"),
    )
    op.execute(
        "INSERT INTO slack_messages (approval_id, kind, channel, ts, claimed_at) "
        "SELECT id, 'prompt', slack_channel, slack_ts, created_at FROM approvals "
        "WHERE slack_channel IS NOT NULL AND slack_ts IS NOT NULL"
    )
    # Plain ALTER TABLE (SQLite >= 3.35 drops an unindexed column in place): a batch copy
    # would drop and recreate `approvals`, which approval_votes' foreign key forbids.
    op.execute("ALTER TABLE approvals DROP COLUMN slack_ts")
    op.execute("ALTER TABLE approvals DROP COLUMN slack_channel")


def downgrade() -> None:
    op.add_column("approvals", sa.Column("slack_channel", sa.String(64), nullable=True))
    op.add_column("approvals", sa.Column("slack_ts", sa.String(32), nullable=True))
    op.execute(
        "UPDATE approvals SET "
        "slack_channel = (SELECT channel FROM slack_messages m WHERE m.approval_id = approvals.id "
        "AND m.kind = 'prompt' AND m.ts IS NOT NULL), "
        "slack_ts = (SELECT ts FROM slack_messages m WHERE m.approval_id = approvals.id "
        "AND m.kind = 'prompt' AND m.ts IS NOT NULL)"
    )
    op.drop_table("slack_messages")
