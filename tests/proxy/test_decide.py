"""proxy.decide: the masking layer's inference check on top of the policy's verdict."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.masking import Masker
from broker.masking.config import MaskingConfig
from broker.policy import Decision, PolicyEngine, Verdict
from proxy.decide import INFERENCE_RULE, Context, decide

AGENT_SAFE = PolicyEngine.preset("agent-safe")
OBSERVE = PolicyEngine.preset("observe")
SPELL = (
    "select pos, ch from customers c, generate_series(1, 11) pos,"
    " (select chr(g) ch from generate_series(32, 126) g) v where c.id = 1 and substr(c.ssn, pos, 1) = ch"
)


def decided(sql: str, masker: Masker | None = None, engine: PolicyEngine = AGENT_SAFE) -> Verdict:
    return decide(engine.classify(sql), Context(masker=masker if masker is not None else Masker()))


def test_a_masked_column_in_a_control_position_goes_to_review_naming_column_and_how() -> None:
    verdict = decided(SPELL)
    assert verdict.decision is Decision.REVIEW and verdict.rule == INFERENCE_RULE
    assert "ssn through WHERE" in verdict.reason
    verdict = decided("select id, email from customers order by 2")
    assert verdict.rule == INFERENCE_RULE and "email through ORDER BY" in verdict.reason


def test_safe_forms_and_unmasked_columns_stay_allowed() -> None:
    for sql in (
        "select id from customers where email = $1",
        "select id from customers where ssn in ('1', '2')",
        "select id from orders where status like 'a%' order by created_at",
        "select count(*) from customers where api_key is null",
    ):
        assert decided(sql).decision is Decision.ALLOW, sql


def test_the_mode_is_set_per_resource_and_per_column() -> None:
    blocking = Masker(MaskingConfig(inference="block"))
    assert decided(SPELL, blocking).decision is Decision.BLOCK
    allowing_email = Masker(MaskingConfig(inference_columns={"e*mail": "allow", "ssn": "block"}))
    assert decided("select id from customers where email like 'a%'", allowing_email).decision is Decision.ALLOW
    assert decided("select id from customers where ssn like '6%'", allowing_email).decision is Decision.BLOCK
    # The strictest column decides, and the other still shows in the reason.
    verdict = decided("select id from customers where email like 'a%' order by phone", allowing_email)
    assert verdict.decision is Decision.REVIEW and "phone through ORDER BY" in verdict.reason
    assert "email" not in verdict.reason
    # A column the gateway cannot name takes the resource's mode.
    assert decided("select id from customers c(a) where a > 1", blocking).decision is Decision.BLOCK


def test_an_unknown_mode_names_the_key() -> None:
    with pytest.raises(ValidationError, match="inference"):
        MaskingConfig(inference="sometimes")
    with pytest.raises(ValidationError, match="inference_columns"):
        MaskingConfig(inference_columns={" ": "allow"})


def test_masking_off_decides_nothing() -> None:
    assert decided(SPELL, Masker(MaskingConfig(enabled=False))).decision is Decision.ALLOW


def test_a_stricter_policy_verdict_is_kept() -> None:
    verdict = decided("select pg_read_file('/etc/passwd') from customers where ssn like '6%'")
    assert verdict.decision is Decision.BLOCK and verdict.rule != INFERENCE_RULE


def test_observe_mode_records_what_would_have_happened_and_forwards() -> None:
    verdict = decided(SPELL, engine=OBSERVE)
    assert verdict.decision is Decision.ALLOW
    assert verdict.shadow_decision is Decision.REVIEW and INFERENCE_RULE in verdict.reason


def test_execute_carries_what_its_prepare_depends_on() -> None:
    class Names:
        def prepared(self, name: str) -> Verdict | None:
            return AGENT_SAFE.classify("prepare p as select id from customers where ssn like $1").prepares[0][1]

        def cursor_rows(self, name: str) -> None:
            return None

    verdict = decide(AGENT_SAFE.classify("execute p('6%')"), Context(masker=Masker(), names=Names()))
    assert verdict.decision is Decision.REVIEW and verdict.rule == INFERENCE_RULE
