"""``jitgate policy check``: ask the policy engine about statements, without a database.

::

    jitgate policy check --sql "delete from customers" --json
    {"sql": "delete from customers", "decision": "review", "rule": "agent-safe/...", ...}

    jitgate policy check --sql S1 --sql S2 [--policy FILE|PRESET] [--preset NAME]
                         [--resource R] [--group G ...] [--json]
    jitgate policy check --corpus cases.yaml [--policy ...]    # exit 1 on any mismatch

The masking layer has its say too, as on the gateway: a write that would store values derived
from a masked column under a name the default masking rules do not mask is ``review``
(``masking/stored-unmasked``); ``--no-masking`` shows the policy's verdict alone.

``--sql -`` reads one statement string from standard input. With ``--json`` each answer is
one JSON object per line, in order, with the keys ``sql``, ``decision``, ``rule``, ``reason``
(then extras such as ``shadow_decision``, ``tables``, ``prepares``, ``copy``); without it, a
table. A corpus is a YAML list of ``{sql, expect}`` (``expect``: allow, review or block;
optional ``rule``, ``resource``, ``groups``); every entry whose decision (or rule) differs is
reported, and the exit status is 1 if there is any. Bad arguments, policy files and corpora
exit with status 2, and so does a statement the parser rejects (its error and position are
printed): a ``--sql`` that does not parse, or a corpus case that does not parse although it
does not expect ``block``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table

from broker.masking import Masker
from broker.policy import PolicyConfigError, PolicyEngine, Verdict
from proxy.decide import Context, decide
from proxy.records import syntax_error

__all__ = ["register"]

_STYLE = {"allow": "green", "review": "yellow", "block": "bold red"}


@dataclass(frozen=True, slots=True)
class _Case:
    sql: str
    expect: str
    rule: str | None
    resource: str | None
    groups: tuple[str, ...]


def register(app: typer.Typer) -> None:
    """Add the ``policy`` command group to the jitgate CLI."""
    policy_app = typer.Typer(
        name="policy", help="Check SQL against a policy, offline.", no_args_is_help=True
    )
    policy_app.command("check")(check)
    app.add_typer(policy_app, name="policy")


def check(
    sql: Annotated[
        list[str] | None,
        typer.Option("--sql", help="A statement string to classify (repeatable; - for stdin)."),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="A YAML policy file, or a preset name."),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option("--preset", help="A built-in preset: agent-safe, observe, read-only."),
    ] = None,
    resource: Annotated[
        str | None, typer.Option("--resource", help="Resource the statements are sent to.")
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="An OIDC group of the caller (repeatable)."),
    ] = None,
    corpus: Annotated[
        Path | None,
        typer.Option("--corpus", help="YAML list of {sql, expect}; exit 1 on any mismatch."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    masking: Annotated[
        bool,
        typer.Option(
            "--masking/--no-masking",
            help="Apply the gateway's masking check (default masking rules): writes that would store "
            "masked values under unmasked names are review.",
        ),
    ] = True,
) -> None:
    """Classify statements and print the decision, rule and reason of each."""
    err = Console(stderr=True)
    statements = list(sql or [])
    if not statements and corpus is None:
        err.print("give at least one --sql or a --corpus")
        raise typer.Exit(2)
    if policy is not None and preset is not None:
        err.print("give --policy or --preset, not both")
        raise typer.Exit(2)
    try:
        engine = (
            PolicyEngine.load(policy) if policy else PolicyEngine.preset(preset or "agent-safe")
        )
    except PolicyConfigError as exc:
        err.print(str(exc), markup=False, highlight=False)
        raise typer.Exit(2) from exc
    groups = tuple(group or ())
    # As the proxy builds it: no masker in shadow mode (observe forwards everything unmasked).
    masker = Masker() if masking and engine.document.top.preset != "observe" else None

    def classify(text: str, resource: str | None, groups: tuple[str, ...]) -> Verdict:
        return decide(engine.classify(text, resource=resource, groups=groups), Context(masker=masker))

    texts = [sys.stdin.read() if text == "-" else text for text in statements]
    results = [(text, classify(text, resource, groups)) for text in texts]
    _print(results, as_json)
    unparseable = [(text, found) for text in texts if (found := syntax_error(text)) is not None]
    for text, (message, position) in unparseable:
        at = f" at character {position}" if position is not None else ""
        err.print(f"syntax error{at}: {message}: {text}", markup=False, highlight=False)

    if corpus is not None:
        try:
            cases = _load_corpus(corpus)
        except ValueError as exc:
            err.print(f"{corpus}: {exc}", markup=False, highlight=False)
            raise typer.Exit(2) from exc
        mismatches = _run_corpus(classify, cases, default_resource=resource, default_groups=groups)
        _report(mismatches, len(cases), as_json, err)
        broken = [(case, found) for case in cases if case.expect != "block" and (found := syntax_error(case.sql))]
        for case, (message, position) in broken:
            at = f" at character {position}" if position is not None else ""
            err.print(f"{corpus}: syntax error{at}: {message}: {case.sql}", markup=False, highlight=False)
        if unparseable or broken:
            raise typer.Exit(2)
        if mismatches:
            raise typer.Exit(1)
    if unparseable:
        raise typer.Exit(2)


def _record(text: str, verdict: Verdict) -> dict[str, Any]:
    return {"sql": text, **verdict.as_dict()}


def _print(results: list[tuple[str, Verdict]], as_json: bool) -> None:
    if not results:
        return
    if as_json:
        for text, verdict in results:
            sys.stdout.write(json.dumps(_record(text, verdict), ensure_ascii=False) + "\n")
        sys.stdout.flush()
        return
    table = Table("sql", "decision", "rule", "reason", show_lines=True)
    for text, verdict in results:
        decision = verdict.decision.value
        shown = decision
        if verdict.shadow_decision is not None:
            shown = f"{decision} (would {verdict.shadow_decision.value})"
        table.add_row(text, f"[{_STYLE[decision]}]{shown}[/]", verdict.rule, verdict.reason)
    Console().print(table)


def _load_corpus(path: Path) -> list[_Case]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the corpus: {exc}") from exc
    if not isinstance(data, list):
        raise ValueError("a corpus is a list of {sql, expect} entries")
    cases = []
    for i, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise ValueError(f"[{i}]: must be a mapping with sql and expect")
        text, expect = entry.get("sql"), entry.get("expect")
        if not isinstance(text, str):
            raise ValueError(f"[{i}].sql: required, a string")
        if expect not in ("allow", "review", "block"):
            raise ValueError(f"[{i}].expect: must be one of allow, review, block")
        rule, resource, groups = entry.get("rule"), entry.get("resource"), entry.get("groups", [])
        if rule is not None and not isinstance(rule, str):
            raise ValueError(f"[{i}].rule: must be a string")
        if resource is not None and not isinstance(resource, str):
            raise ValueError(f"[{i}].resource: must be a string")
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise ValueError(f"[{i}].groups: must be a list of strings")
        unknown = set(entry) - {"sql", "expect", "rule", "resource", "groups", "note"}
        if unknown:
            raise ValueError(f"[{i}]: unknown key {sorted(unknown)[0]!r}")
        cases.append(_Case(text, expect, rule, resource, tuple(groups)))
    return cases


def _run_corpus(
    classify: Callable[[str, str | None, tuple[str, ...]], Verdict],
    cases: list[_Case],
    *,
    default_resource: str | None,
    default_groups: tuple[str, ...],
) -> list[tuple[_Case, Verdict]]:
    mismatches = []
    for case in cases:
        verdict = classify(
            case.sql,
            case.resource if case.resource is not None else default_resource,
            case.groups or default_groups,
        )
        wrong_rule = case.rule is not None and case.rule != verdict.rule
        if verdict.decision.value != case.expect or wrong_rule:
            mismatches.append((case, verdict))
    return mismatches


def _report(
    mismatches: list[tuple[_Case, Verdict]], total: int, as_json: bool, err: Console
) -> None:
    if as_json:
        for case, verdict in mismatches:
            record = _record(case.sql, verdict)
            record["expect"] = case.expect
            if case.rule is not None:
                record["expect_rule"] = case.rule
            record["mismatch"] = True
            sys.stdout.write(json.dumps(record, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    elif mismatches:
        table = Table("sql", "expected", "got", "rule", "reason", show_lines=True)
        for case, verdict in mismatches:
            expected = case.expect + (f" ({case.rule})" if case.rule else "")
            table.add_row(case.sql, expected, verdict.decision.value, verdict.rule, verdict.reason)
        Console().print(table)
    summary = f"corpus: {total - len(mismatches)} of {total} as expected"
    if mismatches:
        summary += f", {len(mismatches)} mismatched"
    err.print(summary, markup=False, highlight=False)


if __name__ == "__main__":  # python -m broker.cli.policy_cmd policy check ...
    _app = typer.Typer()
    register(_app)
    _app()
