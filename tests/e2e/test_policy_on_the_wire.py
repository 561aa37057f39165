"""design.md's policy examples, sent by a real client through the real proxy."""

from __future__ import annotations

import asyncpg
import pytest

from proxy.records import syntax_error

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
            # Blocked by policy: 42501; unparseable: PostgreSQL's own 42601, from the gateway.
            error = asyncpg.PostgresSyntaxError if syntax_error(sql) else asyncpg.InsufficientPrivilegeError
            with pytest.raises(error) as err:
                await conn.execute(sql)
            assert "jitgate" in str(err.value) + str(err.value.detail)
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
        sessions = await gateway.store.sessions.list_sessions(limit=500)
        out = []
        for s in sessions:
            if s.resource == "demo_observe":
                detail = await gateway.store.sessions.get_session(s.id)
                out += [(st.sql, st.decision, st.shadow_decision) for st in detail.statements]
        return out

    rows = gateway.call(shadow_decisions())
    assert ("delete from orders", "allow", "review") in rows


async def test_a_do_block_running_sql_built_at_run_time_is_blocked(gateway, upstream, demo_roles):
    """The red team's bypass: the ALTER ROLE text sits in a table, a DO block EXECUTEs it. It
    used to be reviewed as "a DO block runs procedural code"; approved, it let the agent set
    the gateway's upstream password and log in directly."""
    admin = await asyncpg.connect(upstream.dsn("demo"))
    conn = await asyncpg.connect(gateway.dsn())
    rolpassword = "select rolpassword from pg_authid where rolname = $1"
    try:
        before = await admin.fetchval(rolpassword, demo_roles.rw_user)
        await conn.execute("create temp table cfg(k text, v text)")
        await conn.execute(
            "insert into cfg values ('a', 'ALTER ROLE demo_rw PASSWORD ''agent-owns-this''')"
        )
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
            await conn.execute(
                "do $$declare r text; begin select v into r from cfg where k = 'a'; execute r; end$$"
            )
        assert err.value.sqlstate == "42501"
        assert "blocked by policy rule agent-safe/runtime-sql" in str(err.value)
        assert "runs SQL built at run time, which the gateway cannot check" in str(err.value)
        # nothing ran: the password is the gateway's, and the agent's does not log in
        assert await admin.fetchval(rolpassword, demo_roles.rw_user) == before
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(upstream.dsn("demo", demo_roles.rw_user, "agent-owns-this"))
        # the session goes on; the same string as a constant is judged as the ALTER ROLE it is
        with pytest.raises(asyncpg.InsufficientPrivilegeError) as err:
            await conn.execute("do $$begin execute 'ALTER ROLE demo_rw PASSWORD ''x'''; end$$")
        assert "agent-safe/roles" in str(err.value)
        assert await conn.fetchval("select count(*) from cfg") == 1
    finally:
        await conn.close()
        await admin.close()
