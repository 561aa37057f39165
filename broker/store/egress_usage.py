"""Per-agent egress usage: rows and bytes an agent read from a resource, per fixed window.

The proxy (proxy.egress_ledger) charges what its sessions returned, in batches off the data
path, and reads back the totals every process has charged. A charge is one
`INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n ... RETURNING`, atomic on both
backends (PostgreSQL's row lock, SQLite's write lock taken by `BEGIN IMMEDIATE`), so
processes sharing the store never lose each other's increments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from broker.store.base import StoreBase
from broker.store.models import EgressUsage


@dataclass(frozen=True, slots=True)
class EgressCharge:
    """Rows and bytes to add to an agent's usage of `resource` in the window starting at
    `window_start` (Unix seconds) and lasting `window_seconds`; zeros only read the total."""

    principal: str
    resource: str
    window_seconds: int
    window_start: int
    rows: int = 0
    bytes: int = 0

    @property
    def key(self) -> tuple[str, str, int, int]:
        return (self.principal, self.resource, self.window_seconds, self.window_start)


class EgressUsageRepository:
    def __init__(self, core: StoreBase) -> None:
        self.core = core

    async def charge_egress(self, charges: Sequence[EgressCharge]) -> list[tuple[int, int]]:
        """Add each charge to its window's totals in one transaction; the (rows, bytes) totals
        after it, in the order given (a window never charged reads as (0, 0)).

        Rows are locked in key order, so two processes charging the same agents cannot
        deadlock on PostgreSQL."""
        if not charges:
            return []
        totals: dict[int, tuple[int, int]] = {}
        table = cast(Table, EgressUsage.__table__)
        insert = pg_insert if self.core.dialect == "postgresql" else sqlite_insert
        now = self.core.clock()
        order = sorted(range(len(charges)), key=lambda i: charges[i].key)
        # Charges of nothing (an idle sync, a session start) only read: on SQLite they need not
        # take the write lock the recorder and token checks wait on.
        reads_only = not any(charge.rows or charge.bytes for charge in charges)
        async with self.core.transaction("charge egress usage", read_only=reads_only) as session:
            for i in order:
                charge = charges[i]
                if charge.rows < 0 or charge.bytes < 0:
                    raise ValueError("egress usage only grows")
                where = (
                    (table.c.principal == charge.principal)
                    & (table.c.resource == charge.resource)
                    & (table.c.window_seconds == charge.window_seconds)
                    & (table.c.window_start == charge.window_start)
                )
                if not charge.rows and not charge.bytes:
                    found = (await session.execute(select(table.c.row_count, table.c.byte_count).where(where))).first()
                    totals[i] = (int(found[0]), int(found[1])) if found is not None else (0, 0)
                    continue
                stmt: Any = insert(table).values(
                    principal=charge.principal,
                    resource=charge.resource,
                    window_seconds=charge.window_seconds,
                    window_start=charge.window_start,
                    row_count=charge.rows,
                    byte_count=charge.bytes,
                    updated_at=now,
                )
                stmt = stmt.on_conflict_do_update(
                    index_elements=["principal", "resource", "window_seconds", "window_start"],
                    set_={
                        "row_count": table.c.row_count + stmt.excluded.row_count,
                        "byte_count": table.c.byte_count + stmt.excluded.byte_count,
                        "updated_at": stmt.excluded.updated_at,
                    },
                ).returning(table.c.row_count, table.c.byte_count)
                row = (await session.execute(stmt)).one()
                totals[i] = (int(row[0]), int(row[1]))
        return [totals[i] for i in range(len(charges))]

    async def prune_egress_usage(self, before: int) -> int:
        """Delete the usage of windows that ended before `before` (Unix seconds); how many."""
        table = cast(Table, EgressUsage.__table__)
        async with self.core.transaction("prune egress usage") as session:
            result: Any = await session.execute(
                delete(table).where(table.c.window_start + table.c.window_seconds < before)
            )
            return int(result.rowcount or 0)
