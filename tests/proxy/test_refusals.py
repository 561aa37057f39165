"""Refusals an agent can act on: MESSAGE names the rule, DETAIL what would be allowed
instead, HINT how to get access or approval (ErrorResponse fields D and H)."""

from __future__ import annotations

import pytest

from broker.policy import PolicyEngine
from broker.policy.model import Decision, Verdict
from proxy.records import INSTEAD, refusal_message


def fields(raw: bytes) -> dict[str, str]:
    assert raw[:1] == b"E"
    out: dict[str, str] = {}
    for part in raw[5:].split(b"\x00"):
        if part:
            out[chr(part[0])] = part[1:].decode()
    return out


@pytest.mark.parametrize(
    ("sql", "rule", "instead"),
    [
        ("select pg_read_file('/etc/passwd')", "agent-safe/server-functions", "SELECT from tables"),
        ("copy customers to program 'curl x'", "agent-safe/server-copy", "TO STDOUT"),
        ("SET ROLE postgres", "agent-safe/set-role", "request access"),
    ],
)
def test_blocked_statements_say_what_to_do(sql, rule, instead):
    verdict = PolicyEngine.preset("agent-safe").classify(sql)
    assert verdict.decision is Decision.BLOCK and verdict.rule == rule
    f = fields(refusal_message(verdict))
    assert f["C"] == "42501" and rule in f["M"]
    assert f["D"].startswith(f"rule: {rule}; instead: ") and instead in f["D"]
    assert "jitgate connect <resource> --role <role>" in f["H"] and "request_access" in f["H"]


def test_an_unparseable_statement_gets_postgres_syntax_error():
    sql = "select 1;\nselect 'é', * form t"
    verdict = PolicyEngine.preset("agent-safe").classify(sql)
    assert verdict.decision is Decision.BLOCK and verdict.rule == "agent-safe/unparseable"
    f = fields(refusal_message(verdict, sql=sql))
    assert (f["C"], f["M"], f["P"]) == ("42601", 'syntax error at or near "form"', "25")  # 1-based characters
    assert f["H"] == "fix the SQL; the gateway only forwards statements it can parse"
    assert "jitgate" in f["D"] and "jitgate connect" not in f["H"]
    end = fields(refusal_message(verdict, sql="select 1 +"))
    assert (end["M"], end["P"]) == ("syntax error at end of input", "11")  # as PostgreSQL says


def test_unparseable_for_another_reason_stays_a_policy_block():
    verdict = Verdict(Decision.BLOCK, "agent-safe/unparseable", "statement nested too deeply to check")
    f = fields(refusal_message(verdict, sql="select 1"))  # it parses: the verdict's reason stands
    assert f["C"] == "42501" and "nested too deeply" in f["M"]


def test_a_review_refusal_carries_the_hint_of_how_it_ended():
    verdict = PolicyEngine.preset("agent-safe").classify("delete from orders")
    assert verdict.decision is Decision.REVIEW
    f = fields(refusal_message(verdict, denied_reason="approval x denied by dana: not now", hint="dana denied it"))
    assert "not now" in f["M"] and "add a WHERE clause" in f["D"]
    assert f["H"] == "dana denied it"
    unparked = fields(refusal_message(verdict))  # refused without asking anyone (a fast-path call)
    assert "once it is approved" not in unparked["H"] and "send it as a query" in unparked["H"]


def test_unavailable_is_retryable():
    f = fields(refusal_message(Verdict(Decision.BLOCK, "gateway/recorder-unavailable", "behind")))
    assert f["C"] == "57P03" and "retry" in f["H"]


def test_every_preset_guard_has_an_alternative():
    from broker.policy.presets import PRESETS

    for preset in PRESETS.values():
        for rule in preset.guards:
            assert rule.id.rpartition("/")[2] in INSTEAD, rule.id


def _approval(status, **kw):
    from datetime import UTC, datetime, timedelta

    from broker.approvals.model import Approval

    now = datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
    return Approval(
        id="a1", kind="statement", status=status, requester="agent:bot", requester_groups=("ai-agents",),
        resource="demo", created_at=now, expires_at=now + timedelta(minutes=5), approver_groups=("dba",), **kw,
    )


@pytest.mark.parametrize(
    ("status", "kw", "wanted"),
    [
        ("denied", {"decided_by": ("person:dana@example.com",), "decision_reason": "keep them"},
         "person:dana@example.com denied this statement: keep them"),
        ("expired", {"decision_reason": "no decision within 5 min"},
         "the request expired unanswered; re-run to ask again"),
        ("cancelled", {"decision_reason": "the session ended"}, "cancelled (the session ended); re-run to ask again"),
        ("pending", {}, "re-run the same statement in this session once it is approved"),
    ],
)
def test_each_way_a_review_ends_has_a_true_hint(status, kw, wanted):
    from broker.approvals.model import Status
    from proxy.approvals import refused_outcome

    outcome = refused_outcome(_approval(Status(status), **kw), waited=120)
    assert not outcome.approved and outcome.hint is not None and wanted in outcome.hint
    if status != "pending":
        assert "once" not in outcome.hint  # only a pending request is worth re-running after approval
