"""The console's session pages warn, visibly, when what they show does not match the audit
chain (issue 16): a statement edited in the `statements` table is marked TAMPERED."""

# The fixture imported from test_console is redefined as a test argument, as pytest intends.
# ruff: noqa: F811
from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text

from broker.store.records import SessionStart, StatementRecord
from tests.broker.console.test_console import env  # noqa: F401


async def test_replay_and_live_pages_warn_of_tampering(env):  # type: ignore[no-untyped-def]
    store = env.app.state.store
    issued = await store.tokens.issue_token("agent:bot", ["ai-agents"], "prod", "readwrite", timedelta(hours=1), True)
    grant = await store.tokens.verify_token(issued.token, "prod")
    sid = await store.sessions.start_session(SessionStart(grant, application_name="psql"))
    now = datetime.now(UTC)
    await store.sessions.record_statements([
        StatementRecord(sid, 1, "select 1", "allow", now, rows=1),
        StatementRecord(sid, 2, "delete from orders", "review", now, rows=4, approval_id="a-1"),
    ])
    async with env.as_person("dana", ("dba",)) as dana:
        clean = (await dana.get(f"/console/sessions/{sid}")).text
        assert "TAMPERED" not in clean and "Tampering" not in clean
        assert "no reason given" in clean and "application_name" in clean  # psql is no reason
        assert "approval <a href=\"/console/approvals/a-1\">a-1</a>" in clean

        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE statements SET sql = 'select 42' WHERE session_id = :s AND seq = 1"),
                               {"s": sid})
        page = (await dana.get(f"/console/sessions/{sid}")).text
        assert "Tampering" in page and "(#1)" in page
        assert "TAMPERED</strong>: does not match its audit record" in page and ": sql</div>" in page
        fragment = (await dana.get(f"/console/fragments/sessions/{sid}")).text
        assert "Tampering" in fragment
        live = (await dana.get("/console/fragments/sessions")).text
        assert "TAMPERED" in live


async def test_session_pages_warn_of_session_tampering_and_show_deleted_sessions(env):  # type: ignore[no-untyped-def]
    store = env.app.state.store
    issued = await store.tokens.issue_token("agent:bot", ["ai-agents"], "prod", "readwrite", timedelta(hours=1), True)
    grant = await store.tokens.verify_token(issued.token, "prod")
    forged = await store.sessions.start_session(SessionStart(grant, application_name="psql", intent="fix orders"))
    deleted = await store.sessions.start_session(SessionStart(grant, application_name="psql", intent="drop things"))
    await store.sessions.record_statements([StatementRecord(deleted, 1, "delete from orders", "allow",
        datetime.now(UTC))])
    async with env.as_person("dana", ("dba",)) as dana:
        clean = (await dana.get(f"/console/sessions/{forged}")).text
        assert "Tampering" not in clean and "TAMPERED" not in clean
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE sessions SET principal = 'agent:innocent', intent = 'routine'"
                                    " WHERE id = :s"), {"s": forged})
            await conn.execute(text("DELETE FROM statements WHERE session_id = :s"), {"s": deleted})
            await conn.execute(text("DELETE FROM sessions WHERE id = :s"), {"s": deleted})
        page = (await dana.get(f"/console/sessions/{forged}")).text
        assert "Tampering" in page and "this session does not match its audit records: principal, intent" in page
        assert "Tampering" in (await dana.get(f"/console/fragments/sessions/{forged}")).text
        gone = await dana.get(f"/console/sessions/{deleted}")
        assert gone.status_code == 200
        assert "row_deleted" in gone.text and "delete from orders" in gone.text and "drop things" in gone.text
        listing = (await dana.get("/console/sessions")).text
        assert listing.count("TAMPERED") >= 2 and deleted in listing
        live = (await dana.get("/console/fragments/sessions")).text
        assert f"session-{deleted}" in live and "TAMPERED" in live
