"""Recorded result rows per statement (resources.<name>.record_results).

Revision ID: 0005_results
Revises: 0004_leases
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_results"
down_revision: str | None = "0004_leases"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A nullable column, not a table: results are read only with their statement (replay),
    # and the recorder's batch insert stays one executemany.
    with op.batch_alter_table("statements") as batch:
        batch.add_column(sa.Column("results", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("statements") as batch:
        batch.drop_column("results")
