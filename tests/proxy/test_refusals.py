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
        ("selec * form t", "agent-safe/unparseable", "fix the SQL syntax"),
    ],
)
def test_blocked_statements_say_what_to_do(sql, rule, instead):
    verdict = PolicyEngine.preset("agent-safe").classify(sql)
    assert verdict.decision is Decision.BLOCK and verdict.rule == rule
    f = fields(refusal_message(verdict))
    assert f["C"] == "42501" and rule in f["M"]
    assert f["D"].startswith(f"rule: {rule}; instead: ") and instead in f["D"]
    assert "jitgate connect <resource> --role <role>" in f["H"] and "request_access" in f["H"]


def test_denied_review_says_how_to_rerun():
    verdict = PolicyEngine.preset("agent-safe").classify("delete from orders")
    assert verdict.decision is Decision.REVIEW
    f = fields(refusal_message(verdict, denied_reason="approval x denied by dana: not now"))
    assert "not now" in f["M"]
    assert "add a WHERE clause" in f["D"]
    assert "re-run the same statement" in f["H"] and "approval_status" in f["H"]


def test_unavailable_is_retryable():
    f = fields(refusal_message(Verdict(Decision.BLOCK, "gateway/recorder-unavailable", "behind")))
    assert f["C"] == "57P03" and "retry" in f["H"]


def test_every_preset_guard_has_an_alternative():
    from broker.policy.presets import PRESETS

    for preset in PRESETS.values():
        for rule in preset.guards:
            assert rule.id.rpartition("/")[2] in INSTEAD, rule.id
