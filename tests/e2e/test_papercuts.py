"""Newcomer papercuts through the real proxy, with real clients (issue 17).

- A statement PostgreSQL's parser (pglast, the gateway's) rejects is answered by the gateway
  itself as PostgreSQL would: SQLSTATE 42601, the parser's message and cursor position (P),
  a hint to fix the SQL, and the same ReadyForQuery status as a direct connection gets. It is
  recorded as a refusal with 42601, and never reaches the server as written.
- A refused review says what is true of it: denied (by whom, why), expired unanswered,
  cancelled, or still pending after the wait; only the last says to re-run once approved.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from broker.approvals.model import Approval, Status
from broker.approvals.settings import ApprovalSettings
from broker.config import ProxySettings
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.e2e.test_approvals import DBA, psql, service, vote, wait_pending

pytestmark = pytest.mark.e2e

BAD = [
    ("selec * form customers", 1),
    ("select 1;\nselect * form customers", 20),
    ("select 'é', * form customers", 15),  # characters, not bytes, as PostgreSQL counts
    ("select * from customers where", 30),  # "at end of input": one past the last character
]


@pytest.fixture(scope="module")
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="jitgate-papercuts-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), approvals=ApprovalSettings(default_approvers=["dba"]),
            proxy=ProxySettings(listen_port=0, review_wait_seconds=20),
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _error(dsn: str, sql: str) -> psycopg.Error:
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as err:
            conn.execute(sql)
        assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
    return err.value


@pytest.mark.parametrize(("sql", "position"), BAD)
def test_a_syntax_error_is_42601_at_the_servers_position(gw, upstream, sql, position):
    direct = _error(upstream.dsn("demo"), sql)
    proxied = _error(gw.dsn(), sql)
    assert direct.sqlstate == proxied.sqlstate == "42601"
    assert proxied.diag.message_primary == direct.diag.message_primary
    assert proxied.diag.statement_position == direct.diag.statement_position == str(position)
    assert proxied.diag.message_hint == "fix the SQL; the gateway only forwards statements it can parse"
    assert "ask for" not in str(proxied) and "jitgate connect" not in str(proxied)


def test_psql_shows_the_syntax_error_with_its_caret(gw):
    proc = psql(gw, "selec * form customers")
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert 'ERROR:  syntax error at or near "selec"' in err
    assert "LINE 1: selec * form customers\n        ^" in err  # psql drew the P field
    assert "HINT:  fix the SQL" in err


def _script(dsn: str, script: list[str]) -> list[tuple[str | None, str]]:
    """(SQLSTATE or None, transaction status from the ReadyForQuery after it) per statement."""
    out: list[tuple[str | None, str]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for sql in script:
            try:
                conn.execute(sql)
                sqlstate = None
            except psycopg.Error as exc:
                sqlstate = exc.sqlstate
            out.append((sqlstate, conn.info.transaction_status.name))
    return out


def test_transaction_state_after_a_syntax_error_is_postgres_own(gw, upstream):
    """Inside a transaction block the error fails the transaction (then 25P02 until
    ROLLBACK); in an implicit one nothing has begun, since nothing of the string ran."""
    script = ["begin", "selec 1", "select 1", "rollback", "begin; selec 1", "select 1", "selec 1; commit"]
    direct = _script(upstream.dsn("demo"), script)
    assert _script(gw.dsn(), script) == direct
    assert direct[:4] == [(None, "INTRANS"), ("42601", "INERROR"), ("25P02", "INERROR"), (None, "IDLE")]


def test_extended_protocol_syntax_error_is_42601_too(gw, upstream):
    for dsn in (upstream.dsn("demo"), gw.dsn()):
        with psycopg.connect(dsn) as conn:  # not autocommit: psycopg opens a transaction
            with pytest.raises(psycopg.errors.SyntaxError) as err:
                conn.execute("selec %s", (1,), prepare=True)
            assert err.value.diag.statement_position == "1"
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
            conn.rollback()
            assert conn.execute("select %s::int", (2,)).fetchone() == (2,)


def test_the_syntax_error_is_recorded_as_a_refusal_with_42601(gw):
    with psycopg.connect(gw.dsn(), autocommit=True, application_name="papercut-syntax") as conn:
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec 'recorded' form t")
    gw.flush()
    sessions = gw.call(gw.store.sessions.list_sessions())
    session = next(s for s in sessions if s.application_name == "papercut-syntax")
    detail = gw.call(gw.store.sessions.get_session(session.id))
    (statement,) = [s for s in detail.statements if "recorded" in s.sql]
    assert (statement.decision, statement.error_sqlstate) == ("block", "42601")
    assert statement.rule.endswith("/unparseable")


def _refused_review(gw: Gateway, sql: str, decide) -> psycopg.Error:
    """Send `sql` (a review) from psycopg, let `decide(approval)` settle it, return the error."""
    errors: list[psycopg.Error] = []

    def run() -> None:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            conn.execute("create temp table if not exists t_pc (id int)")
            try:
                conn.execute(sql)
            except psycopg.Error as exc:
                errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    approval = wait_pending(gw, sql)
    decide(approval)
    thread.join(20)
    assert not thread.is_alive() and len(errors) == 1
    return errors[0]


def test_a_denied_statement_says_who_denied_it_and_why(gw):
    err = _refused_review(gw, "delete from t_pc", lambda a: vote(gw, a.id, DBA, "deny", reason="keep them"))
    assert err.sqlstate == "42501"
    assert "dana@example.com" in err.diag.message_primary and "keep them" in err.diag.message_primary
    hint = err.diag.message_hint or ""
    assert "denied" in hint and "dana@example.com" in hint and "keep them" in hint
    assert "once approved" not in hint and "once it is approved" not in hint


def test_an_expired_request_says_it_expired_unanswered(gw):
    async def expire(approval: Approval) -> None:
        # The worker's job, done now, on a store clock past the request's expiry.
        store = service(gw).approvals.core
        real = store.clock
        store.clock = lambda: approval.expires_at + timedelta(seconds=1)
        try:
            assert [a.id for a in await service(gw).expire_due()] == [approval.id]
        finally:
            store.clock = real

    err = _refused_review(gw, "delete from t_pc where true", lambda a: gw.call(expire(a)))
    hint = err.diag.message_hint or ""
    assert "the request expired unanswered; re-run to ask again" in hint
    assert "once approved" not in hint and "once it is approved" not in hint


def test_a_cancelled_request_says_it_was_cancelled(gw):
    sql = "delete from t_pc where 1 = 1"
    err = _refused_review(gw, sql, lambda a: gw.call(service(gw).cancel(a.id, reason="withdrawn by ops")))
    hint = err.diag.message_hint or ""
    assert "cancelled" in hint and "withdrawn by ops" in hint and "re-run to ask again" in hint
    assert "once approved" not in hint and "once it is approved" not in hint


def test_a_wait_that_runs_out_says_to_rerun_once_approved(upstream, demo_roles, tmp_path):
    gw = start_gateway(
        upstream, demo_roles, tmp_path, approvals=ApprovalSettings(default_approvers=["dba"]),
        proxy=ProxySettings(listen_port=0, review_wait_seconds=0.5),
    )
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            conn.execute("create temp table t_w (id int)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                conn.execute("delete from t_w")
        hint = err.value.diag.message_hint or ""
        assert "still pending" in err.value.diag.message_primary
        assert "re-run the same statement in this session once it is approved" in hint
        (approval,) = [a for a in gw.call(service(gw).find(status=Status.PENDING)) if a.sql == "delete from t_w"]
        assert approval.id in err.value.diag.message_primary
    finally:
        stop_gateway(gw)


def test_what_only_the_server_parses_is_not_forwarded(gw, upstream):
    """`123abc` is `123 AS abc` to PostgreSQL before 16 and trailing junk to pglast's parser
    (18): the gateway answers 42601 itself and the write never runs, whatever the server."""
    sql = "insert into t_lex values (1) returning 123abc"
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("create temp table t_lex (id int)")
        with pytest.raises(psycopg.errors.SyntaxError) as err:
            conn.execute(sql)
        assert "trailing junk" in err.value.diag.message_primary
        assert conn.execute("select count(*) from t_lex").fetchone() == (0,)
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as direct:
        direct.execute("create temp table t_lex (id int)")
        try:
            direct.execute(sql)
        except psycopg.errors.SyntaxError:
            return  # a server of 16 or newer agrees with pglast
        assert direct.execute("select count(*) from t_lex").fetchone() == (1,)  # it would have run
