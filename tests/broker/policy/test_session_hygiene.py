"""Two-phase commit goes to review; NOTIFY only on the channels a policy lists."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from broker.cli.main import app
from broker.policy import Decision, PolicyConfigError, PolicyEngine
from broker.policy.facts import extract
from broker.policy.kinds import KINDS, TAGS, tags_for
from broker.policy.loader import parse_policy

ALLOW, REVIEW, BLOCK = Decision.ALLOW, Decision.REVIEW, Decision.BLOCK
ENGINE = PolicyEngine.preset()


# -- two-phase commit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("prepare transaction 'x'", "prepare_transaction"),
        ("COMMIT PREPARED 'x'", "commit_prepared"),
        ("rollback prepared 'x'", "rollback_prepared"),
        ("commit", "transaction"),
        ("prepare p as select 1", "prepare"),
    ],
)
def test_two_phase_statements_have_kinds_of_their_own(sql: str, kind: str) -> None:
    assert extract(sql).statements[0].kind == kind
    assert kind in KINDS


def test_two_phase_kinds_are_not_session_local() -> None:
    for kind in ("prepare_transaction", "commit_prepared", "rollback_prepared"):
        assert tags_for(kind) == {"write", "two_phase"}
    assert "two_phase" in TAGS


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("PREPARE TRANSACTION 'gid-1'", "prepare-transaction"),
        ("begin; update orders set status = 'x' where id = 1; prepare transaction 'g'", "prepare-transaction"),
        ("/* harmless */ prepare transaction 'g'", "prepare-transaction"),
        ("commit prepared 'someone-elses'", "finish-prepared"),
        ("ROLLBACK PREPARED 'someone-elses'", "finish-prepared"),
        ("select 1; commit prepared 'g'", "finish-prepared"),
    ],
)
def test_two_phase_commit_is_reviewed(sql: str, rule: str) -> None:
    verdict = ENGINE.classify(sql)
    assert (verdict.decision, verdict.rule) == (REVIEW, f"agent-safe/{rule}"), verdict


def test_the_reasons_say_why() -> None:
    assert "after the session ends" in ENGINE.classify("prepare transaction 'g'").reason
    assert "another session's" in ENGINE.classify("commit prepared 'g'").reason


def test_read_only_reviews_two_phase_commit_too() -> None:
    verdict = PolicyEngine.preset("read-only").classify("commit prepared 'g'")
    assert verdict.decision is REVIEW


BLOCK_2PC = """
rules:
  - id: no-2pc
    match: {kinds: [two_phase]}
    decision: block
    reason: two-phase commit is not for agents
  - {id: do-ok, match: {kinds: [do]}, decision: allow}
"""


@pytest.mark.parametrize(
    "sql",
    [
        "prepare transaction 'g'",
        "commit prepared 'g'",
        "rollback prepared 'g'",
        # Hidden: inside a DO block or a function body, and in a statement list. (PL/pgSQL
        # itself refuses these at run time, and COMMIT / ROLLBACK PREPARED do not even compile
        # there; the policy does not count on it.)
        "do $$ begin prepare transaction 'g'; end $$",
        "create function f() returns void language plpgsql as $$ begin prepare transaction 'g'; end $$",
        "create function f() returns void language sql as $$ commit prepared 'g' $$",
        "select * from query_to_xml('rollback prepared ''g''', true, true, '')",
        "select 1; select 2; rollback prepared 'g'",
    ],
)
def test_an_operator_can_block_two_phase_commit_wherever_it_hides(sql: str) -> None:
    verdict = PolicyEngine.from_yaml(BLOCK_2PC).classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, "no-2pc"), verdict


def test_hidden_two_phase_commit_is_at_least_reviewed_by_default() -> None:
    for sql, kind in (
        ("do $$ begin prepare transaction 'g'; end $$", "prepare_transaction"),
        ("select * from query_to_xml('commit prepared ''g''', true, true, '')", "commit_prepared"),
    ):
        assert ENGINE.classify(sql).decision is REVIEW, sql
        assert kind in {s.kind for st in extract(sql).statements for s in st.subjects}, sql


# -- NOTIFY -------------------------------------------------------------------------------

LISTED = PolicyEngine.from_yaml(
    """
notify_channels: [jobs, "Mixed"]
resources:
  quiet: {notify_channels: []}
  busy: {notify_channels: [jobs, audit_feed]}
"""
)


@pytest.mark.parametrize(
    "sql",
    [
        "notify ch",
        "NOTIFY ch, 'payload'",
        "notify jobs",  # not listed by the preset (default: none)
        "select pg_notify('ch', 'x')",
        "select pg_catalog.pg_notify('ch', 'x')",
        "select \"pg_notify\"('ch', 'x')",
        "select * from pg_notify('ch', 'x')",
        "select pg_notify($1, 'x')",
        "select pg_notify(name, 'x') from channels",
        "select pg_notify('c' || 'h', 'x')",
        "select pg_notify(null, 'x')",
        "select 1 where pg_notify('ch', '') is null",
        "with x as (select pg_notify('ch', 'x')) select 1",
        "select 1; notify ch",
        "begin; notify ch; commit",
        "do $$ begin perform pg_notify('ch', 'x'); end $$",
        "do $$ begin notify ch; end $$",
        "create function f() returns void language sql as $$ select pg_notify('ch', 'x') $$",
        "create rule r as on insert to t do also notify ch",
        "create rule r as on insert to t do also select pg_notify('ch', 'x')",
        "prepare p as select pg_notify('ch', 'x')",
        "explain analyze select pg_notify('ch', 'x')",
        "explain select pg_notify('ch', 'x')",
        "select * from query_to_xml('select pg_notify(''ch'', ''x'')', true, true, '')",
        "copy (select pg_notify('ch', 'x')) to stdout",
    ],
)
def test_notify_on_an_unlisted_or_unknown_channel_is_blocked(sql: str) -> None:
    verdict = ENGINE.classify(sql)
    assert (verdict.decision, verdict.rule) == (BLOCK, "agent-safe/notify-channel"), verdict


@pytest.mark.parametrize(
    ("sql", "decision"),
    [
        ("notify jobs", ALLOW),
        ("NOTIFY JOBS, 'x'", ALLOW),  # folds to jobs, as the server folds it
        ('notify "Mixed"', ALLOW),
        ("notify Mixed", BLOCK),  # folds to mixed: not listed
        ("select pg_notify('jobs', 'x')", ALLOW),
        ("select pg_notify('Mixed', 'x')", ALLOW),
        ("select pg_notify('JOBS', 'x')", BLOCK),  # a text value: no folding
        ("select pg_notify('jobs'::text, 'x')", ALLOW),
        ("select pg_notify('jobs', 'x'), pg_notify('other', 'y')", BLOCK),
        ("select pg_notify($1, 'x')", BLOCK),
        ("listen anything", ALLOW),  # receiving is not limited
    ],
)
def test_listed_channels(sql: str, decision: Decision) -> None:
    verdict = LISTED.classify(sql)
    assert verdict.decision is decision, verdict


def test_the_most_specific_scope_lists_the_channels() -> None:
    assert LISTED.classify("notify jobs", resource="quiet").decision is BLOCK
    assert LISTED.classify("notify audit_feed", resource="busy").decision is ALLOW
    assert LISTED.classify("notify audit_feed", resource="other").decision is BLOCK
    assert LISTED.classify("notify jobs", resource="other").decision is ALLOW


def test_the_channel_decides_not_only_the_shape() -> None:
    assert LISTED.classify("select pg_notify('jobs', 'a')").decision is ALLOW
    assert LISTED.classify("select pg_notify('evil', 'a')").decision is BLOCK
    assert LISTED.classify("select pg_notify('jobs', 'b')").decision is ALLOW


def test_an_operator_may_send_unlisted_channels_to_review_with_override() -> None:
    yaml = "rules: [{id: ask, match: {kinds: [unlisted_channel]}, decision: review, override: true}]"
    verdict = PolicyEngine.from_yaml(yaml).classify("notify ch")
    assert (verdict.decision, verdict.rule) == (REVIEW, "ask")
    with pytest.raises(PolicyConfigError, match="would loosen preset rule agent-safe/notify-channel"):
        parse_policy("rules: [{id: ask, match: {kinds: [unlisted_channel]}, decision: allow}]")


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        ("notify_channels: jobs", "notify_channels", "must be a list"),
        ("notify_channels: ['']", "notify_channels[0]", "'' is not a channel name"),
        (f"notify_channels: [{'x' * 64}]", "notify_channels[0]", "'xxx"),
        ("resources: {r: {notify_channels: [1]}}", "resources.r.notify_channels[0]", "must be a string"),
    ],
)
def test_bad_channel_lists_name_the_key(text: str, path: str, message: str) -> None:
    with pytest.raises(PolicyConfigError) as info:
        parse_policy(text)
    assert any(p == path and m.startswith(message) for p, m in info.value.errors), info.value.errors


def test_policy_check_gives_the_same_decisions(tmp_path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("notify_channels: [jobs]\ntimeouts: {statement_timeout: 30s}\n")
    sqls = [
        "notify jobs", "notify other", "select pg_notify($1, 'x')", "commit prepared 'g'",
        "set statement_timeout = '1min'", "set statement_timeout = '10s'",
    ]  # fmt: skip
    args = ["policy", "check", "--policy", str(policy), "--json"]
    for sql in sqls:
        args += ["--sql", sql]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines()]
    assert [(a["decision"], a["rule"]) for a in answers] == [
        ("allow", "agent-safe/notify"),
        ("block", "agent-safe/notify-channel"),
        ("block", "agent-safe/notify-channel"),
        ("review", "agent-safe/finish-prepared"),
        ("block", "agent-safe/session-timeouts"),
        ("allow", "agent-safe/session"),
    ]
