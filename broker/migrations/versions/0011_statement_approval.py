"""The approval a statement ran under, or was refused by, on its row (issue 16).

The chained `statement` record carries it too; `broker.audit.coverage` compares the two.

Revision ID: 0011_statement_approval
Revises: 0010_slack_messages
Create Date: 2026-12-09
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_statement_approval"
down_revision: str | None = "0010_slack_messages"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("statements", sa.Column("approval_id", sa.String(36), nullable=True))
    op.create_index("ix_statements_approval_id", "statements", ["approval_id"])


def downgrade() -> None:
    op.drop_index("ix_statements_approval_id", table_name="statements")
    with op.batch_alter_table("statements") as batch:
        batch.drop_column("approval_id")
