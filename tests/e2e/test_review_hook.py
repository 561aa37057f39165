"""Parking: a statement under review waits for the review hook, then runs or is refused.

The Slack approval workflow plugs into this hook; here the hook is a small real object.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from proxy.hooks import ReviewOutcome
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e


class ScriptedReviewer:
    """Approves statements mentioning 'orders', denies the rest, after a short wait."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def review(self, *, session, sql, verdict, notify, estimate=None, blast_radius=None):
        self.seen.append(sql)
        notify(f"jitgate: awaiting approval review-{len(self.seen)} ({verdict.rule})")
        await asyncio.sleep(0.3)
        if "orders" in sql:
            return ReviewOutcome(approved=True)
        return ReviewOutcome(approved=False, reason="denied by the on-call DBA: not during business hours")

    async def session_ended(self, session_id):
        return None


@pytest.fixture(scope="module")
def reviewed_gateway(upstream, demo_roles) -> Iterator[tuple[Gateway, ScriptedReviewer]]:
    reviewer = ScriptedReviewer()
    with tempfile.TemporaryDirectory(prefix="jitgate-review-") as tmp:
        gw = start_gateway(upstream, demo_roles, Path(tmp), review=reviewer)
        try:
            yield gw, reviewer
        finally:
            stop_gateway(gw)


def test_approved_statement_runs_in_the_clients_transaction(reviewed_gateway):
    gw, reviewer = reviewed_gateway
    notices: list[str] = []
    with psycopg.connect(gw.dsn()) as conn:
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        with conn.transaction(force_rollback=True):
            before = conn.execute("select count(*) from orders").fetchone()[0]
            cur = conn.execute("delete from orders")  # no WHERE: review
            assert cur.rowcount == before > 0
            assert conn.execute("select count(*) from orders").fetchone()[0] == 0
        # rolled back by the client: the approved statement ran inside its transaction
        assert conn.execute("select count(*) from orders").fetchone()[0] == before
    assert any("awaiting approval" in n for n in notices)
    assert "delete from orders" in reviewer.seen


def test_denied_statement_gets_the_reviewers_reason(reviewed_gateway):
    gw, _ = reviewed_gateway
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
            conn.execute("truncate customers")
        assert "not during business hours" in str(err.value)
        assert conn.execute("select count(*) from customers").fetchone()[0] == 200


def test_parked_statement_in_a_pipeline(reviewed_gateway):
    gw, _ = reviewed_gateway
    with psycopg.connect(gw.dsn()) as conn:
        with conn.transaction(force_rollback=True):
            with conn.pipeline():
                c1 = conn.execute("select 1")
                c2 = conn.execute("delete from orders where true")  # constant-true WHERE: review
                c3 = conn.execute("select count(*) from orders")
            assert c1.fetchone()[0] == 1
            assert c2.rowcount > 0
            assert c3.fetchone()[0] == 0
