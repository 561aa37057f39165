"""`jitgate policy check` on text the parser rejects: exit 2 with the parser's error, in
`--sql` and in `--corpus` mode (unless the case expects `block`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from broker.cli.policy_cmd import register


def run(*args: str) -> tuple[int, str, str]:
    app = typer.Typer()
    register(app)

    @app.command()
    def version() -> None:  # a second command, as the real CLI has many
        print("0")

    result = CliRunner().invoke(app, ["policy", "check", *args], env={"COLUMNS": "200"})
    return result.exit_code, result.stdout, result.stderr


def test_an_unparseable_statement_exits_2_with_the_parse_error() -> None:
    code, out, err = run("--sql", "select 1", "--sql", "selec * form customers", "--json")
    assert code == 2
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["decision"] for a in answers] == ["allow", "block"]  # still answered, in order
    assert answers[1]["rule"] == "agent-safe/unparseable"
    assert 'syntax error at character 1: syntax error at or near "selec"' in err


def test_parseable_statements_still_exit_0() -> None:
    assert run("--sql", "select 1", "--sql", "drop table t")[0] == 0


def test_a_corpus_case_that_does_not_parse_unexpectedly_exits_2(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.yaml"
    corpus.write_text("- {sql: 'select 1', expect: allow}\n- {sql: 'select * form t where', expect: allow}\n")
    code, _, err = run("--corpus", str(corpus))
    assert code == 2
    assert 'syntax error at character 10: syntax error at or near "form"' in err
    # Expected to be refused as unparseable: an ordinary passing case.
    corpus.write_text("- {sql: 'select 1', expect: allow}\n- {sql: 'selec 1', expect: block}\n")
    assert run("--corpus", str(corpus))[0] == 0
