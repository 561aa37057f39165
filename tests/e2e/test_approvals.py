"""Parked statements decided through the approvals service, with real psql and psycopg clients.

The gateway parks `review` statements with `ApprovalReviewHook`; the tests decide them the way
the API, the CLI and Slack do (`ApprovalService.vote`) and watch the client.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from broker.approvals.model import Approval, ApprovalRefused, Scope, Status, Voter
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.config import ProxySettings
from tests.conftest import require_binary
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway, wait_pending
from tests.e2e.conftest import approval_service as service

pytestmark = pytest.mark.e2e

DBA = Voter("person:dana@example.com", ("dba",), "api")
SRE = Voter("person:sam@example.com", ("sre", "dba"), "api")
DEV = Voter("person:dev@example.com", ("developers",), "api")
AGENT = "agent:test"


@pytest.fixture(scope="module")
def gw(upstream, demo_roles) -> Iterator[Gateway]:
    approvals = ApprovalSettings(
        rules=[
            # TRUNCATE needs two approvers; everything else one, with session scope allowed.
            ApprovalRuleSettings(rules=["agent-safe/truncate"], approvers=["dba"], quorum=2, scopes=[Scope.ONCE]),
            ApprovalRuleSettings(approvers=["dba"], scopes=[Scope.ONCE, Scope.SESSION]),
        ]
    )
    with tempfile.TemporaryDirectory(prefix="jitgate-approvals-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), approvals=approvals,
            proxy=ProxySettings(listen_port=0, review_wait_seconds=20),
        )
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def vote(gw: Gateway, approval_id: str, voter: Voter, choice: str = "approve", **kw):
    return gw.call(service(gw).vote(approval_id, voter, choice, **kw))


def psql(gw: Gateway, sql: str) -> subprocess.Popen[str]:
    require_binary("psql")
    return subprocess.Popen(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, gw.dsn()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )


def count(gw: Gateway, table: str) -> int:
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


def test_psql_delete_runs_once_approved(gw, upstream):
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("create table if not exists scratch_a (id int)")
        admin.execute("delete from scratch_a")
        admin.execute("insert into scratch_a select generate_series(1, 7)")
        admin.execute("grant all on scratch_a to public")
        admin.execute("analyze scratch_a")
    proc = psql(gw, "delete from scratch_a")
    approval = wait_pending(gw, "delete from scratch_a")
    assert approval.requester == AGENT and approval.rule == "agent-safe/write-without-where"
    assert approval.approver_groups == ("dba",) and approval.details["tables"] == ["scratch_a"]
    assert approval.details["row_estimate"] == 7  # the gateway's EXPLAIN: the blast radius
    assert proc.poll() is None  # parked: psql is still waiting
    result = vote(gw, approval.id, DBA)
    assert result.approval.status is Status.APPROVED
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.strip() == "DELETE 7"
    assert f"awaiting approval {approval.id}" in err  # the NoticeResponse psql printed
    assert count(gw, "scratch_a") == 0


def test_denied_statement_gets_the_approvers_reason_and_never_runs(gw):
    before = count(gw, "orders")
    proc = psql(gw, "delete from orders")
    approval = wait_pending(gw, "delete from orders")
    vote(gw, approval.id, DBA, "deny", reason="not before the backup finishes")
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "not before the backup finishes" in err and "dana@example.com" in err
    assert count(gw, "orders") == before


def test_quorum_of_two_and_who_may_vote(gw):
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("create temp table t_q (id int)")
        conn.execute("insert into t_q values (1), (2)")
        done: dict[str, object] = {}

        def run() -> None:
            try:
                done["status"] = conn.execute("truncate t_q").statusmessage
            except psycopg.Error as exc:
                done["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        approval = wait_pending(gw, "truncate t_q")
        assert approval.quorum == 2
        with pytest.raises(ApprovalRefused) as refused:
            vote(gw, approval.id, Voter(AGENT, ("dba",), "api"))  # the requester itself
        assert refused.value.code == "self_approval"
        with pytest.raises(ApprovalRefused) as refused:
            vote(gw, approval.id, DEV)
        assert refused.value.code == "not_approver"
        first = vote(gw, approval.id, DBA)
        again = vote(gw, approval.id, DBA)  # a double click counts once
        assert first.counted and not again.counted
        assert again.approval.status is Status.PENDING and len(again.approval.approvals) == 1
        time.sleep(0.3)
        assert thread.is_alive()  # one approval of two: still parked
        assert vote(gw, approval.id, SRE).approval.status is Status.APPROVED
        thread.join(20)
        assert done.get("status") == "TRUNCATE TABLE", done
        assert conn.execute("select count(*) from t_q").fetchone()[0] == 0


def test_session_scope_covers_reruns_in_that_session_only(gw):
    with psycopg.connect(gw.dsn()) as conn:
        conn.execute("create temp table t_s (id int)")
        conn.commit()
        result: dict[str, object] = {}

        def run() -> None:
            result["rows"] = conn.execute("delete from t_s").rowcount

        thread = threading.Thread(target=run)
        thread.start()
        approval = wait_pending(gw, "delete from t_s")
        vote(gw, approval.id, DBA, scope="session")
        thread.join(20)
        assert result["rows"] == 0
        conn.execute("insert into t_s values (1)")
        t0 = time.monotonic()
        assert conn.execute("delete from t_s").rowcount == 1  # no second review
        assert time.monotonic() - t0 < 5
        conn.rollback()
    assert not [a for a in gw.call(service(gw).find(status=Status.PENDING)) if a.sql == "delete from t_s"]


def test_client_that_disconnects_while_parked_cancels_its_request(gw):
    proc = psql(gw, "update customers set email = null")
    approval = wait_pending(gw, "update customers set email = null")
    proc.kill()
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        current = gw.call(service(gw).get(approval.id))
        if current.status is not Status.PENDING:
            break
        time.sleep(0.05)
    assert current.status is Status.CANCELLED
    with pytest.raises(ApprovalRefused) as refused:
        vote(gw, approval.id, DBA)
    assert refused.value.code == "not_pending"


def test_late_approval_covers_one_rerun_in_the_same_session(upstream, demo_roles, tmp_path):
    gw = start_gateway(
        upstream, demo_roles, tmp_path, approvals=ApprovalSettings(default_approvers=["dba"]),
        proxy=ProxySettings(listen_port=0, review_wait_seconds=0.5),
    )
    try:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            conn.execute("create temp table t_l (id int)")
            conn.execute("insert into t_l values (1), (2), (3)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
                conn.execute("delete from t_l")
            assert "still pending" in str(err.value) and "re-run" in str(err.value)
            (approval,) = [a for a in gw.call(service(gw).find(status=Status.PENDING)) if a.sql == "delete from t_l"]
            vote(gw, approval.id, DBA)  # late: the client already gave up waiting
            assert conn.execute("delete from t_l").rowcount == 3  # covered: runs without parking
            conn.execute("insert into t_l values (4)")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):  # a once-approval is spent
                conn.execute("delete from t_l")
        assert gw.call(service(gw).get(approval.id)).used == 1
    finally:
        stop_gateway(gw)


def test_each_execution_of_a_prepared_statement_needs_its_own_approval(gw):
    """psycopg prepares a statement run often (server-side, Parse once, Bind/Execute after):
    the approval given at its Parse must not cover every later execution."""
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        conn.execute("create temp table t_p (id int)")
        seen: set[str] = set()
        for round_ in range(3):
            finished: list[str] = []
            thread = threading.Thread(
                target=lambda: finished.append(conn.execute("delete from t_p", prepare=True).statusmessage)
            )
            thread.start()
            deadline = time.monotonic() + 15
            fresh: list[Approval] = []
            while not fresh:
                fresh = [a for a in gw.call(service(gw).find(status=Status.PENDING))
                         if a.sql == "delete from t_p" and a.id not in seen]
                assert thread.is_alive() or fresh, f"execution {round_} ran without an approval"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            seen.add(fresh[0].id)
            vote(gw, fresh[0].id, DBA)
            thread.join(15)
            assert finished == ["DELETE 0"]
        # An approval for the rest of the session covers the next executions without a prompt.
        thread = threading.Thread(target=lambda: conn.execute("delete from t_p", prepare=True))
        thread.start()
        approval = None
        while approval is None:
            approval = next((a for a in gw.call(service(gw).find(status=Status.PENDING))
                             if a.sql == "delete from t_p" and a.id not in seen), None)
            time.sleep(0.02)
        vote(gw, approval.id, DBA, scope="session")
        thread.join(15)
        assert conn.execute("delete from t_p", prepare=True).statusmessage == "DELETE 0"
