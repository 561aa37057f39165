"""How a policy's rules meet a statement's facts."""

from __future__ import annotations

from broker.policy import Decision, extract, judge
from broker.policy.judge import Policy
from broker.policy.presets import PRESETS
from broker.policy.rules import Match, NamePattern, Rule

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK


def rule(id: str, decision: Decision, override: bool = False, **match: object) -> Rule:
    return Rule(id, Match(**match), decision, f"because {id}", override=override)  # type: ignore[arg-type]


def verdict(sql: str, *rules: Rule, preset: str = "agent-safe") -> tuple[Decision, str]:
    v = judge(Policy(PRESETS[preset], rules), extract(sql))
    return v.decision, v.rule


def test_operator_rules_come_before_the_presets_ordinary_rules() -> None:
    truncate = rule("t", ALLOW, kinds=frozenset({"truncate"}))
    assert verdict("truncate t", truncate) == (ALLOW, "t")
    payments = rule("p", BLOCK, tables=(NamePattern("payments"),))
    assert verdict("select * from payments", payments) == (BLOCK, "p")
    assert verdict("select * from orders", payments) == (ALLOW, "agent-safe/read")


def test_first_matching_operator_rule_wins() -> None:
    first = rule("first", REVIEW, kinds=frozenset({"select"}))
    second = rule("second", BLOCK, kinds=frozenset({"select"}))
    assert verdict("select 1", first, second) == (REVIEW, "first")


def test_guards_need_override() -> None:
    loose = rule("loose", ALLOW, kinds=frozenset({"alter_system"}))
    assert verdict("alter system set x = 1", loose) == (BLOCK, "agent-safe/alter-system")
    forced = rule("forced", REVIEW, override=True, kinds=frozenset({"alter_system"}))
    assert verdict("alter system set x = 1", forced) == (REVIEW, "forced")


def test_an_override_must_cover_every_blocked_function() -> None:
    cancel = rule("cancel", ALLOW, override=True, functions=(NamePattern("pg_cancel_backend"),))
    assert verdict("select pg_cancel_backend(1)", cancel) == (ALLOW, "cancel")
    assert verdict("select pg_cancel_backend(1), pg_read_file('x')", cancel) == (
        BLOCK,
        "agent-safe/server-functions",
    )


def test_an_override_for_one_subject_does_not_hide_another() -> None:
    allow_selects = rule("sel", ALLOW, override=True, kinds=frozenset({"select"}))
    # The SET ROLE from set_config is its own subject: the select override does not cover it.
    assert verdict("select set_config('role', 'x', false)", allow_selects) == (
        BLOCK,
        "agent-safe/set-role",
    )


def test_unparseable_cannot_be_overridden() -> None:
    everything = rule("all", ALLOW, override=True)
    assert verdict("selec 1", everything) == (BLOCK, "agent-safe/unparseable")


def test_several_copies_in_one_string_are_blocked() -> None:
    assert verdict("copy a to stdout; copy b to stdout") == (BLOCK, "agent-safe/copy-alone")
    v = judge(Policy(PRESETS["agent-safe"]), extract("select 1; copy a to stdout"))
    assert v.copy is not None and v.copy.relation == "a"


def test_prepares_executes_deallocates_in_order() -> None:
    v = judge(
        Policy(PRESETS["agent-safe"]),
        extract("prepare a as select 1; prepare b as delete from t; execute a; deallocate b"),
    )
    assert [(name, inner.decision) for name, inner in v.prepares] == [("a", ALLOW), ("b", REVIEW)]
    assert v.executes == ("a",)
    assert v.deallocates == ("b",)
    assert (v.decision, v.statement_count) == (REVIEW, 4)


def test_execute_is_allowed_for_the_proxy_to_resolve() -> None:
    assert verdict("execute p") == (ALLOW, "agent-safe/execute")
