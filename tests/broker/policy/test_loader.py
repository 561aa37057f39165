"""Policy files: format, scopes, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.exceptions import ConfigError
from broker.policy import Decision, PolicyConfigError, PolicyEngine, load_policy, parse_policy

EXAMPLE = Path(__file__).parents[3] / "broker" / "policy" / "examples" / "strict-prod.yaml"

POLICY = """
preset: agent-safe
rules:
  - id: no-touching-payments
    match: {kinds: [update, delete], tables: [payments]}
    decision: review
    reason: payments changes need a DBA
resources:
  prod:
    preset: read-only
    rules:
      - {id: prod-no-truncate, match: {kinds: [truncate]}, decision: block}
    groups:
      dba:
        rules: [{id: prod-dba-truncate, match: {kinds: [truncate]}, decision: allow}]
groups:
  dba:
    rules: [{id: dba-truncate, match: {kinds: [truncate]}, decision: allow}]
  auditors:
    preset: observe
"""


def check(engine: PolicyEngine, sql: str, **scope: object) -> tuple[str, str]:
    verdict = engine.classify(sql, **scope)  # type: ignore[arg-type]
    return verdict.decision.value, verdict.rule


def test_scopes_and_their_order() -> None:
    engine = PolicyEngine(parse_policy(POLICY))
    assert check(engine, "delete from payments where id = 1") == ("review", "no-touching-payments")
    assert check(engine, "truncate t") == ("review", "agent-safe/truncate")
    assert check(engine, "truncate t", groups=["dba"]) == ("allow", "dba-truncate")
    # Resource rules come before group rules, and resource-and-group rules before both ...
    assert check(engine, "truncate t", resource="prod") == ("block", "prod-no-truncate")
    # prod names a preset, which is more specific than the auditors' observe.
    assert check(engine, "truncate t", resource="prod", groups=["auditors"]) == (
        "block",
        "prod-no-truncate",
    )
    assert check(engine, "truncate t", resource="prod", groups=["dba"]) == (
        "allow",
        "prod-dba-truncate",
    )
    # ... and the most specific preset wins.
    assert check(engine, "insert into t values (1)", resource="prod") == (
        "review",
        "read-only/write",
    )
    assert check(engine, "insert into t values (1)", resource="dev") == (
        "allow",
        "agent-safe/write",
    )
    assert check(engine, "drop table t", groups=["auditors"]) == ("allow", "observe/shadow")


def test_resource_groups_beat_resources() -> None:
    text = """
resources:
  prod:
    rules: [{id: deny, match: {kinds: [truncate]}, decision: block}]
    groups:
      dba:
        rules: [{id: allow-dba, match: {kinds: [truncate]}, decision: allow}]
"""
    engine = PolicyEngine(parse_policy(text))
    assert check(engine, "truncate t", resource="prod", groups=["dba"]) == ("allow", "allow-dba")
    assert check(engine, "truncate t", resource="prod", groups=["x"]) == ("block", "deny")


def test_override_loosens_a_guard() -> None:
    text = """
rules:
  - {id: ok-cancel, match: {functions: [pg_cancel_backend]}, decision: allow, override: true}
"""
    engine = PolicyEngine(parse_policy(text))
    assert check(engine, "select pg_cancel_backend(42)") == ("allow", "ok-cancel")


def test_empty_file_is_agent_safe() -> None:
    engine = PolicyEngine(parse_policy(""))
    assert check(engine, "delete from t") == ("review", "agent-safe/write-without-where")


def test_example_file_loads_and_decides() -> None:
    engine = PolicyEngine.from_file(EXAMPLE)
    assert check(engine, "delete from payments where id = 1")[1] == "no-touching-payments"
    assert check(engine, "select pg_sleep(1)") == ("block", "no-sleeping")
    assert check(engine, "create table x (a int)", resource="prod") == ("block", "prod-no-ddl")
    assert check(engine, "vacuum t", resource="prod", groups=["dba"]) == (
        "allow",
        "prod-dba-vacuum",
    )
    assert check(engine, "select pg_cancel_backend(1)", groups=["dba"]) == (
        "allow",
        "dba-may-cancel",
    )


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("rules: [{id: a, decision: allw}]", "rules[0].decision",
         "must be one of allow, review, block"),
        ("rules: [{id: a, decision: allow}, {id: b, decision: alow}, {id: c, decision: x}]",
         "rules[2].decision", "must be one of allow, review, block"),
        ("rules: [{id: a, decision: allow, match: {kinds: [updte]}}]", "rules[0].match.kinds[0]",
         "unknown statement kind or tag 'updte' (did you mean update?)"),
        ("rules: [{id: a, decision: allow, match: {knds: [update]}}]", "rules[0].match.knds",
         "unknown key (expected one of kinds, tables, functions, settings, where)"),
        ("rules: [{id: a, decision: allow}, {id: a, decision: block}]", "rules[1].id",
         "duplicate rule id 'a' (first at rules[0])"),
        ("preset: strict", "preset", "must be one of agent-safe, observe, read-only"),
        ("resources: {prod: {rulez: []}}", "resources.prod.rulez",
         "unknown key (expected one of preset, rules, "),
        ("groups: {dba: {rules: [{id: x}]}}", "groups.dba.rules[0].decision", "required"),
        ("rules: [{id: a, decision: allow, match: {kinds: [alter_system]}}]", "rules[0].decision",
         "allow would loosen preset rule agent-safe/alter-system (alter_system); add override: "
         "true if that is what you mean"),
        ("rules: [{id: 'a/b', decision: allow}]", "rules[0].id",
         "must start with a letter or digit and hold only letters, digits, -_.:"),
        ("rules: {id: a}", "rules", "must be a list"),
        ("rules: [{id: 5, decision: allow}]", "rules[0].id", "must be a string"),
        ("rules: [{id: a, decision: allow, override: 'yes'}]", "rules[0].override",
         "must be true or false"),
        ("rules: [{id: a, decision: allow, match: {where: none}}]", "rules[0].match.where",
         "must be one of missing, present"),
        ("rules: [{id: a, decision: allow, match: [x]}]", "rules[0].match", "must be a mapping"),
        ("- a", "", "must be a mapping (preset, rules, resources, groups)"),
        ("rules: [unclosed", "line 1, column 17", "not valid YAML"),
    ],
)  # fmt: skip
def test_errors_name_the_key(text: str, path: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        parse_policy(text, source="p.yaml")
    error = info.value
    assert any(p == path and m.startswith(message) for p, m in error.errors), error.errors
    assert "p.yaml" in str(error)
    assert isinstance(error, ConfigError)  # loaders of the whole configuration catch it too


def test_all_errors_at_once() -> None:
    with pytest.raises(PolicyConfigError) as info:
        parse_policy("preset: x\nrules: [{id: a, decision: y}]")
    assert {p for p, _ in info.value.errors} == {"preset", "rules[0].decision"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyConfigError, match="cannot read the file"):
        load_policy(tmp_path / "nope.yaml")


def test_default_reason_names_the_rule() -> None:
    document = parse_policy("rules: [{id: r1, match: {kinds: [select]}, decision: review}]")
    (rule,) = document.top.rules
    assert (rule.decision, rule.reason) == (Decision.REVIEW, "policy rule r1 (review)")
