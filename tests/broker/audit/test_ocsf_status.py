"""An OCSF event's status is the outcome of what the record describes (issue 16): a
statement that ran under an approval is a Success, one refused (blocked, denied, expired,
cancelled) or failed in the database is a Failure; a request or approval that ended denied,
expired or cancelled is a Failure. The approval a record belongs to is its
`metadata.correlation_uid`, so a SIEM can join a statement with its approval's records. Every
case validates against the vendored OCSF schema."""

from __future__ import annotations

from typing import Any

import pytest

from broker.audit import events
from broker.audit.ocsf import OcsfMapper
from tests.broker.audit.ocsf_schema import errors
from tests.broker.audit.test_ocsf import T0, chain_of


def ocsf(event: events.AuditEvent) -> dict[str, Any]:
    out = OcsfMapper().map(chain_of([event])[0])
    assert errors(out) == [], out
    return out


def stmt(**kw: Any) -> events.AuditEvent:
    fields: dict[str, Any] = {"session_id": "s1", "seq": 1, "sql": "update t set a = 1", "started_at": T0,
                              "decision": "review", "rule": "agent-safe/writes", "reason": "writes need review"}
    return events.statement(**{**fields, **kw})


def outcome(event: dict[str, Any]) -> tuple[str, str]:
    return event["status"], event["severity"]


def test_an_approved_statement_that_ran_is_a_success_with_its_approval() -> None:
    event = ocsf(stmt(approval_id="ap-1", rows=1, duration_ms=2.5))
    assert (event["status_id"], event["status"]) == (1, "Success")
    assert event["severity"] == "Informational" and "status_detail" not in event
    assert event["metadata"]["correlation_uid"] == "ap-1"


@pytest.mark.parametrize("sqlstate", ["42501", "57014"])
def test_a_reviewed_statement_refused_or_failed_is_a_failure(sqlstate: str) -> None:
    # A denied (or expired, cancelled, still pending) review refuses the statement with an
    # SQLSTATE; so does the database when an approved statement fails there.
    event = ocsf(stmt(approval_id="ap-2", error_sqlstate=sqlstate))
    assert (event["status_id"], event["status"], event["severity"]) == (2, "Failure", "Medium")
    assert event["status_code"] == sqlstate
    assert event["status_detail"] == "writes need review"
    assert event["metadata"]["correlation_uid"] == "ap-2"


def test_a_blocked_statement_is_a_failure_and_an_allowed_one_a_success() -> None:
    blocked = ocsf(stmt(decision="block", reason="no drops", error_sqlstate="42501"))
    assert outcome(blocked) == ("Failure", "Medium") and blocked["status_detail"] == "no drops"
    assert blocked["status_code"] == "42501"
    assert "correlation_uid" not in blocked["metadata"]
    # Blocked is a failure whatever else the record says.
    assert outcome(ocsf(stmt(decision="block", reason="no drops"))) == ("Failure", "Medium")
    allowed = ocsf(stmt(decision="allow", rule=None, reason=None, rows=3))
    assert outcome(allowed) == ("Success", "Informational") and "status_detail" not in allowed
    failed = ocsf(stmt(decision="allow", rule=None, reason=None, error_sqlstate="23505"))
    assert outcome(failed) == ("Failure", "Medium") and failed["status_detail"] == "SQLSTATE 23505"


@pytest.mark.parametrize(
    ("status", "expected", "severity"),
    [("approved", "Success", "Informational"), ("denied", "Failure", "Medium"),
     ("expired", "Failure", "Low"), ("cancelled", "Failure", "Low")],
)
def test_an_approval_decision_is_a_failure_unless_approved(status: str, expected: str, severity: str) -> None:
    event = ocsf(events.approval_decided(approval_id="ap-3", status=status, actor="alice", reason="too broad",
                                         decided_by=["alice"]))
    assert outcome(event) == (expected, severity)
    assert event["metadata"]["correlation_uid"] == "ap-3"
    if expected == "Failure":
        assert event["status_detail"] == f"approval {status}: too broad"
    else:
        assert "status_detail" not in event


def test_votes_and_requests_of_an_approval_share_its_correlation_uid() -> None:
    request = ocsf(events.approval_requested(approval_id="ap-4", kind="statement", requester="agent:ci",
                                             resource="demo", approvers=["dba"], quorum=1, expires_at=T0))
    vote = ocsf(events.approval_vote(approval_id="ap-4", approver="bob", approve=False, reason="no"))
    assert request["metadata"]["correlation_uid"] == vote["metadata"]["correlation_uid"] == "ap-4"
    # A vote against is a vote recorded (the decision says whether the request failed).
    assert outcome(vote) == ("Success", "Informational")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("granted", "Success"), ("pending", "Success"), (None, "Success"), ("denied", "Failure"),
     ("expired", "Failure")],
)
def test_an_access_request_denied_or_expired_is_a_failure(status: str | None, expected: str) -> None:
    event = ocsf(events.access_requested(request_id="r-1", principal="agent:ci", resource="demo", role="rw",
                                         reason="fix ticket 42", status=status))
    assert event["status"] == expected
    if expected == "Failure":
        # The record's `reason` is the requester's justification, not why it failed.
        assert event["status_detail"] == f"access request {status}"
    else:
        assert "status_detail" not in event


def test_a_flood_summary_says_how_many_and_when() -> None:
    event = ocsf(events.login_failed(user="x", resource="demo", client_addr="203.0.113.9:4000", reason="malformed",
                                     suppressed=250, network="203.0.113.0/24", first_seen=T0,
                                     last_seen=T0.replace(second=5)))
    assert (event["status"], event["count"]) == ("Failure", 250)
    assert (event["start_time"], event["end_time"]) == (int(T0.timestamp() * 1000), int(T0.timestamp() * 1000) + 5000)
    assert event["message"] == "250 logins to demo from 203.0.113.0/24 refused: malformed"
