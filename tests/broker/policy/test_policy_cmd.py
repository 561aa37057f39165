"""`jitgate policy check`, through a Typer app built the way broker/cli/main.py builds it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from broker.cli.policy_cmd import register
from tests.broker.policy.test_presets import DESIGN_EXAMPLES

ROOT = Path(__file__).parents[3]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def version() -> None:  # a second command, as the real CLI has many
        print("0")

    return app


def run(app: typer.Typer, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app, ["policy", "check", *args], input=stdin, env={"COLUMNS": "200"}
    )
    return result.exit_code, result.stdout, result.stderr


def test_json_answers_in_order(app: typer.Typer) -> None:
    args = [arg for sql, _ in DESIGN_EXAMPLES for arg in ("--sql", sql)]
    code, out, _ = run(app, *args, "--json")
    assert code == 2  # every statement is answered; one of the examples does not parse
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["sql"], r["decision"]) for r in lines] == [(s, d.value) for s, d in DESIGN_EXAMPLES]
    for record in lines:
        assert list(record)[:4] == ["sql", "decision", "rule", "reason"]
        assert record["rule"] and record["reason"]


def test_table_output(app: typer.Typer) -> None:
    code, out, _ = run(app, "--sql", "delete from customers", "--sql", "select 1")
    assert code == 0
    assert "review" in out and "allow" in out and "write-without-where" in out


def test_policy_file_resource_and_groups(app: typer.Typer, tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "resources: {prod: {preset: read-only}}\n"
        "groups: {dba: {rules: [{id: dba-truncate, match: {kinds: [truncate]}, "
        "decision: allow}]}}\n"
    )
    code, out, _ = run(app, "--policy", str(policy), "--resource", "prod", "--json",
                       "--sql", "insert into t values (1)")  # fmt: skip
    assert (code, json.loads(out)["rule"]) == (0, "read-only/write")
    code, out, _ = run(app, "--policy", str(policy), "--group", "x", "--group", "dba",
                       "--json", "--sql", "truncate t")  # fmt: skip
    assert json.loads(out)["rule"] == "dba-truncate"


def test_presets(app: typer.Typer) -> None:
    code, out, _ = run(app, "--preset", "observe", "--json", "--sql", "drop table t")
    record = json.loads(out)
    assert (record["decision"], record["shadow_decision"]) == ("allow", "review")
    code, out, _ = run(app, "--policy", "read-only", "--json", "--sql", "create table t (a int)")
    assert json.loads(out)["decision"] == "review"


def test_statement_from_stdin(app: typer.Typer) -> None:
    code, out, _ = run(app, "--sql", "-", "--json", stdin="select 1;\nset role postgres;\n")
    record = json.loads(out)
    assert (code, record["decision"], record["statement_count"]) == (0, "block", 2)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--sql", "select 1", "--policy", "x.yaml", "--preset", "observe"],
        ["--sql", "select 1", "--preset", "strict"],
        ["--sql", "select 1", "--policy", "/nonexistent/p.yaml"],
    ],
)
def test_usage_errors_exit_2(app: typer.Typer, args: list[str]) -> None:
    assert run(app, *args)[0] == 2


def test_policy_errors_name_the_key(app: typer.Typer, tmp_path: Path) -> None:
    policy = tmp_path / "bad.yaml"
    policy.write_text("rules:\n  - {id: a, decision: allow}\n  - {id: b, decision: maybe}\n")
    code, _, err = run(app, "--policy", str(policy), "--sql", "select 1")
    assert code == 2
    assert "rules[1].decision: must be one of allow, review, block" in err


def test_corpus(app: typer.Typer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(
        "- {sql: 'select 1', expect: allow}\n"
        "- {sql: 'delete from t', expect: review, rule: agent-safe/write-without-where}\n"
        "- {sql: 'insert into t values (1)', expect: review, resource: prod}\n"
    )
    code, out, err = run(app, "--corpus", str(corpus), "--json")
    assert code == 1
    (mismatch,) = [json.loads(line) for line in out.splitlines()]
    assert (mismatch["sql"], mismatch["expect"], mismatch["decision"]) == (
        "insert into t values (1)",
        "review",
        "allow",
    )
    assert "2 of 3 as expected, 1 mismatched" in err
    code, _, err = run(app, "--corpus", str(corpus), "--preset", "read-only")
    assert code == 1 and "1 mismatched" in err  # select 1 stays allowed; delete is review
    corpus.write_text("- {sql: 'select 1', expect: allow}\n")
    assert run(app, "--corpus", str(corpus))[0] == 0


@pytest.mark.parametrize(
    "content",
    ["{sql: x}", "- {sql: 'select 1'}", "- {sql: 'select 1', expect: maybe}",
     "- {sql: 1, expect: allow}", "- {sql: 'x', expect: allow, extra: 1}", "- [unclosed"],
)  # fmt: skip
def test_bad_corpus_exits_2(app: typer.Typer, tmp_path: Path, content: str) -> None:
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text(content)
    assert run(app, "--corpus", str(corpus))[0] == 2


def test_as_a_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli.policy_cmd", "policy", "check", "--json",
         "--sql", "select * from customers where id = 1", "--sql", "SET ROLE postgres"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["decision"] for r in records] == ["allow", "block"]
