"""An agent's grant names its owner: the proxy's approval of the agent's statement says
"agent X acting for person Y", and Y cannot approve it."""

from __future__ import annotations

import threading
from datetime import timedelta

import psycopg
import pytest

from broker.approvals.model import ApprovalRefused, Status, Voter
from slackapp.blocks import requester_text
from tests.e2e.conftest import Gateway
from tests.e2e.test_approvals import DBA, gw, service, vote, wait_pending  # noqa: F401 - gw is a fixture

pytestmark = pytest.mark.e2e

OWNER = Voter("person:olga@example.com", ("dba",), "api")


def test_agents_statement_approval_names_owner_who_cannot_approve(gw: Gateway) -> None:  # noqa: F811
    issued = gw.call(
        gw.store.tokens.issue_token(
            "agent:bot", ["ai-agents"], "demo", "readwrite", timedelta(hours=1), True, owner=OWNER.principal
        )
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with psycopg.connect(gw.dsn(token=issued.token), autocommit=True) as conn:
                conn.execute("delete from orders")
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        approval = wait_pending(gw, "delete from orders")
        assert (approval.requester, approval.owner) == ("agent:bot", OWNER.principal)
        assert "acting for" in requester_text(approval)
        with pytest.raises(ApprovalRefused) as refused:
            gw.call(service(gw).vote(approval.id, OWNER, "approve"))
        assert refused.value.code == "self_approval"
        result = vote(gw, approval.id, DBA, "deny", reason="not this one")
        assert result.approval.status is Status.DENIED
    finally:
        thread.join(30)
    assert errors and "not this one" in str(errors[0])
