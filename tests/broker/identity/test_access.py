"""The access policy: group -> resource/role rules, auto-grant or approval, capped lifetimes."""

from __future__ import annotations

from datetime import timedelta

from broker.identity.access import decide
from broker.identity.oidc import Principal
from broker.identity.settings import AccessRuleSettings

RULES = [
    AccessRuleSettings(groups=["ai-agents"], resources=["demo"], roles=["readonly", "readwrite"],
                       approval="auto", max_ttl="2h", reusable=True),
    AccessRuleSettings(groups=["developers"], resources=["*"], roles=["readwrite"],
                       approval="required", approvers=["dba"], max_ttl="1h"),
    AccessRuleSettings(groups=["developers"], resources=["prod"], roles=["readwrite"],
                       approval="required", approvers=["sre"]),
]


def who(*groups: str) -> Principal:
    return Principal(subject="s", issuer="i", groups=groups)


def test_auto_grant_capped_at_max_ttl() -> None:
    d = decide(RULES, who("ai-agents"), "demo", "readwrite", timedelta(hours=8))
    assert (d.outcome, d.ttl, d.reusable, d.rule) == ("grant", timedelta(hours=2), True, 0)


def test_shorter_request_keeps_its_ttl() -> None:
    d = decide(RULES, who("ai-agents"), "demo", "readonly", timedelta(minutes=30))
    assert d.ttl == timedelta(minutes=30)


def test_approval_collects_approvers_of_all_matching_rules() -> None:
    d = decide(RULES, who("developers"), "prod", "readwrite", timedelta(minutes=30))
    assert d.outcome == "approval"
    assert d.approvers == ("dba", "sre")
    assert not d.reusable


def test_auto_rule_wins_over_approval_rule() -> None:
    d = decide(RULES, who("developers", "ai-agents"), "demo", "readwrite", timedelta(minutes=5))
    assert d.outcome == "grant"


def test_no_rule_denies() -> None:
    assert decide(RULES, who("ai-agents"), "prod", "readonly", timedelta(hours=1)).outcome == "deny"
    assert decide(RULES, who("ai-agents"), "demo", "admin", timedelta(hours=1)).outcome == "deny"
    assert decide(RULES, who(), "demo", "readonly", timedelta(hours=1)).outcome == "deny"
    assert decide([], who("ai-agents"), "demo", "readonly", timedelta(hours=1)).outcome == "deny"
