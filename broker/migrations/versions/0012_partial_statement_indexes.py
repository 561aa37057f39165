"""Statement indexes on `fingerprint` and `approval_id` only for the rows that have one.

Both columns are NULL on nearly every row the proxy records (it leaves `fingerprint` to the
policy's own records; `approval_id` is set only for a reviewed statement), yet a full index
took an entry for every statement: two B-tree inserts per statement on the recorder's hot
write for entries no query reads. Partial indexes (`WHERE ... IS NOT NULL`, on SQLite and
PostgreSQL alike) still serve "which statements ran under approval X" and cost nothing for a
NULL row: about 1 µs less of the writer's CPU per statement (`bench/recorder_cost.py`).

Revision ID: 0012_partial_statement_indexes
Revises: 0011_statement_approval
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_partial_statement_indexes"
down_revision: str | None = "0011_statement_approval"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PARTIAL = (("ix_statements_fingerprint", "fingerprint"), ("ix_statements_approval_id", "approval_id"))


def upgrade() -> None:
    for name, column in _PARTIAL:
        op.drop_index(name, table_name="statements")
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "statements", [column], sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for name, column in _PARTIAL:
        op.drop_index(name, table_name="statements")
        op.create_index(name, "statements", [column])
