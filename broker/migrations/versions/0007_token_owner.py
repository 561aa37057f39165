"""An agent's owner on its gateway tokens (the person it acts for).

Revision ID: 0007_token_owner
Revises: 0006_approvals
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_token_owner"
down_revision: str | None = "0006_approvals"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: a person's token has no owner, and tokens minted before stay valid.
    with op.batch_alter_table("gateway_tokens") as batch:
        batch.add_column(sa.Column("owner", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("gateway_tokens") as batch:
        batch.drop_column("owner")
