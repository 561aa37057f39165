"""design.md's policy examples, sent by a real client through the real proxy."""

from __future__ import annotations

import asyncpg
import pytest

pytestmark = pytest.mark.e2e

# (sql, decision) from design.md's table; review is refused until approvals land.
EXAMPLES = [
    ("select * from customers where id = 1", "allow"),
    ("begin; update orders set status='x' where id=4; commit", "allow"),
    ("delete from customers", "review"),
    ("DELETE FROM customers WHERE 1=1", "review"),
    ("with d as (delete from orders returning *) select count(*) from d", "review"),
    ("drop table customers", "review"),
    ("select 1; drop table customers", "review"),
    ("/* harmless */ ALTER SYSTEM SET fsync = off", "block"),
    ("select pg_catalog.pg_read_file('/etc/passwd')", "block"),
    ("copy customers to program 'curl ...'", "block"),
    ("SET ROLE postgres", "block"),
    ("selec * form customers", "block"),
]


@pytest.mark.parametrize(("sql", "decision"), EXAMPLES)
async def test_design_examples_on_the_wire(gateway, upstream, sql, decision):
    admin = await asyncpg.connect(upstream.dsn("demo"))
    conn = await asyncpg.connect(gateway.dsn())
    try:
        before = (
            await admin.fetchval("select count(*) from customers"),
            await admin.fetchval("select count(*) from orders"),
        )
        if decision == "allow":
            await conn.execute(sql)
        else:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
                await conn.execute(sql)
            assert "jitgate" in str(err.value)
            # the session stays usable
            assert await conn.fetchval("select 1") == 1
        after = (
            await admin.fetchval("select count(*) from customers"),
            await admin.fetchval("select count(*) from orders"),
        )
        assert before == after  # nothing destructive reached the upstream
        assert (
            await admin.fetchval("select count(*) from information_schema.tables where table_name = 'customers'") == 1
        )
    finally:
        await conn.close()
        await admin.close()


async def test_prepare_execute_of_a_dangerous_statement_is_refused(gateway):
    conn = await asyncpg.connect(gateway.dsn())
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("PREPARE wipe AS DELETE FROM customers")
        # The upstream never saw the PREPARE, so EXECUTE of that name is refused too.
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("EXECUTE wipe")
        await conn.execute("PREPARE one AS SELECT count(*) FROM customers WHERE id = $1")
        assert await conn.fetchval("EXECUTE one(1)") == 1
    finally:
        await conn.close()


async def test_observe_mode_forwards_and_records_shadow_decision(gateway, upstream):
    conn = await asyncpg.connect(gateway.dsn("demo_observe"))
    try:
        # unmasked in shadow mode
        email = await conn.fetchval("select email from customers where id = 1")
        assert "***" not in email and "@" in email
        # a write inside a rolled-back transaction: forwarded, shadow decision recorded
        tr = conn.transaction()
        await tr.start()
        await conn.execute("delete from orders")
        await tr.rollback()
    finally:
        await conn.close()
    gateway.flush()

    async def shadow_decisions():
        sessions = await gateway.store.list_sessions(limit=500)
        out = []
        for s in sessions:
            if s.resource == "demo_observe":
                detail = await gateway.store.get_session(s.id)
                out += [(st.sql, st.decision, st.shadow_decision) for st in detail.statements]
        return out

    rows = gateway.call(shadow_decisions())
    assert ("delete from orders", "allow", "review") in rows
