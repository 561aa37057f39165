"""From facts to a verdict: apply one policy (a preset plus operator rules) to a statement.

For every subject of every statement (see `facts`), the deciding rule is found in this order:

1. the preset's *guards* (its block rules); if one matches, the first operator rule with
   ``override: true`` that also matches stands in for it (for a guard on functions, only if
   it covers every function the guard objects to), otherwise the guard decides;
2. the operator's rules, first match wins (the engine orders them from the most specific
   scope to the least: resource and group, resource, group, file);
3. the preset's ordinary rules, first match wins;
4. the preset's fallback: review.

A statement takes the strictest decision of its subjects, and a string of statements the
strictest of its statements (block > review > allow); the rule and reason reported are those
of the first subject or statement with that decision. Text the parser rejects is blocked
(rule ``<preset>/unparseable``) and no operator rule can change that; an empty string is
allowed (rule ``empty``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .facts import Facts, StatementFacts, Subject
from .flow import merge
from .model import CopyInfo, Decision, RowLimits, Verdict
from .presets import Preset
from .rules import Rule, render_reason
from .timeouts import DEFAULT_TIMEOUTS, TIMEOUT_SETTINGS

__all__ = ["Policy", "judge"]


@dataclass(frozen=True, slots=True)
class _Candidates:
    """The rules that can match subjects of one kind and tag set, in evaluation order."""

    guards: tuple[Rule, ...]
    overrides: tuple[Rule, ...]
    rules: tuple[Rule, ...]
    preset: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    """A preset and the operator rules that apply in one scope, ready to judge."""

    preset: Preset
    rules: tuple[Rule, ...] = ()
    # Channels NOTIFY / pg_notify may use; any other (or one not known statically) is tagged
    # ``unlisted_channel``. Timeout ceilings in ms; a SET above one, or 0, ``unsafe_timeout``.
    notify_channels: frozenset[str] = frozenset()
    timeouts: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    # `max_rows_without_review`: what an unbounded write may change before it needs review.
    row_limits: RowLimits = RowLimits()
    # Rules filtered by the subject's kind and tags: most rules name kinds, so this leaves a
    # handful to test. Filled lazily; bounded by the (small) vocabulary of kinds and tags.
    _index: dict[tuple[str, frozenset[str]], _Candidates] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def candidates(self, subject: Subject) -> _Candidates:
        key = (subject.kind, subject.tags)
        found = self._index.get(key)
        if found is None:
            names = subject.tags | {subject.kind}

            def keep(rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
                return tuple(r for r in rules if r.match.kinds is None or r.match.kinds & names)

            found = _Candidates(
                keep(self.preset.guards),
                keep(tuple(r for r in self.rules if r.override)),
                keep(self.rules),
                keep(self.preset.rules),
            )
            self._index[key] = found
        return found


@dataclass(frozen=True, slots=True)
class _Outcome:
    decision: Decision
    rule: str
    reason: str


def judge(policy: Policy, facts: Facts) -> Verdict:
    """The verdict of `policy` on a parsed statement string."""
    verdict = _enforced(policy, facts)
    return _shadow(verdict) if policy.preset.shadow else verdict


def _enforced(policy: Policy, facts: Facts) -> Verdict:
    preset = policy.preset
    if facts.error is not None:
        return Verdict(
            Decision.BLOCK,
            f"{preset.name}/unparseable",
            f"the statement could not be parsed, so it cannot be checked: {facts.error}",
        )
    if not facts.statements:
        return Verdict(Decision.ALLOW, "empty", "empty query string", statement_count=0)

    outcomes = [_statement(policy, statement) for statement in facts.statements]
    worst = outcomes[0]
    for outcome in outcomes[1:]:
        if outcome.decision > worst.decision:
            worst = outcome

    prepares: list[tuple[str, Verdict]] = []
    executes: list[str] = []
    deallocates: list[str | None] = []
    tables: dict[str, None] = {}
    copies: list[CopyInfo] = []
    for statement in facts.statements:
        if statement.prepare is not None:
            name, inner = statement.prepare
            prepares.append((name, _single(policy, inner)))
        executes.extend(statement.executes)
        deallocates.extend(statement.deallocates)
        tables.update(statement.tables)
        if statement.copy is not None:
            copies.append(statement.copy)
    if len(copies) > 1:
        worst = _Outcome(
            Decision.BLOCK,
            f"{preset.name}/copy-alone",
            "send each COPY as a query of its own, so that its data can be checked",
        )
    return Verdict(
        worst.decision,
        worst.rule,
        worst.reason,
        prepares=tuple(prepares),
        executes=tuple(executes),
        deallocates=tuple(deallocates),
        copy=copies[0] if len(copies) == 1 else None,
        statement_count=len(facts.statements),
        tables=tuple(tables),
        lineage=(
            facts.statements[0].lineage
            if len(facts.statements) == 1
            else merge([statement.lineage for statement in facts.statements])
        ),
        stored=tuple(entry for statement in facts.statements for entry in statement.stored),
        controls=tuple(entry for statement in facts.statements for entry in statement.controls),
        declares=tuple(name for statement in facts.statements for name in statement.declares),
        fetches=tuple(name for statement in facts.statements for name in statement.fetches),
        closes=tuple(name for statement in facts.statements for name in statement.closes),
        transactions=sum(1 for statement in facts.statements if statement.kind == "transaction"),
        rehearse=_rehearse(policy, facts.statements),
    )


def _rehearse(policy: Policy, statements: list[StatementFacts]) -> RowLimits | None:
    """The policy's row limits when a statement writes rows its text does not bound."""
    for statement in statements:
        if any(subject.unbounded for subject in statement.subjects):
            return policy.row_limits
    return None


def _single(policy: Policy, statement: StatementFacts) -> Verdict:
    """The verdict of one statement on its own (the inner statement of a PREPARE)."""
    outcome = _statement(policy, statement)
    return Verdict(
        outcome.decision,
        outcome.rule,
        outcome.reason,
        executes=tuple(statement.executes),
        tables=tuple(statement.tables),
        lineage=statement.lineage,
        stored=statement.stored,
        controls=statement.controls,
        rehearse=_rehearse(policy, [statement]),
    )


def _statement(policy: Policy, statement: StatementFacts) -> _Outcome:
    worst: _Outcome | None = None
    for subject in statement.subjects:
        subject = _scoped(policy, subject)
        rule = _rule_for(policy, subject, statement)
        if worst is None or rule.decision > worst.decision:
            worst = _Outcome(rule.decision, rule.id, render_reason(rule, subject, statement))
            if rule.decision is Decision.BLOCK:
                break
    if worst is None:  # pragma: no cover - every statement has at least one subject
        preset = policy.preset
        return _Outcome(Decision.REVIEW, preset.fallback.id, "statement with nothing to check")
    return worst


def _scoped(policy: Policy, subject: Subject) -> Subject:
    """Tags that depend on this policy's settings rather than on the statement alone."""
    if subject.kind == "notify" and subject.channel not in policy.notify_channels:
        return replace(subject, tags=subject.tags | {"unlisted_channel"})
    if subject.kind == "set" and subject.setting in TIMEOUT_SETTINGS:
        ms, ceiling = subject.timeout_ms, policy.timeouts.get(subject.setting)
        if ceiling is not None and (ms is None or ms <= 0 or ms > ceiling):
            return replace(subject, tags=subject.tags | {"unsafe_timeout"})
    return subject


def _rule_for(policy: Policy, subject: Subject, statement: StatementFacts) -> Rule:
    candidates = policy.candidates(subject)
    for guard in candidates.guards:
        if guard.match.matches(subject, statement):
            for rule in candidates.overrides:
                if _overrides(rule, guard, subject, statement):
                    return rule
            return guard
    for rule in candidates.rules:
        if rule.match.matches(subject, statement):
            return rule
    for rule in candidates.preset:
        if rule.match.matches(subject, statement):
            return rule
    return policy.preset.fallback


def _overrides(rule: Rule, guard: Rule, subject: Subject, statement: StatementFacts) -> bool:
    """Whether an ``override: true`` rule stands in for a guard on this subject.

    Functions are collected over the whole statement, so a rule that lets one function
    through must cover every function the guard objects to: allowing pg_cancel_backend
    must not allow ``SELECT pg_cancel_backend(1), pg_read_file('/etc/passwd')``.
    """
    if not rule.match.matches(subject, statement):
        return False
    if guard.match.functions is None or rule.match.functions is None:
        return True
    allowed = set(rule.match.matched_functions(statement))
    return all(name in allowed for name in guard.match.matched_functions(statement))


def _shadow(verdict: Verdict) -> Verdict:
    """Observe mode: forward everything, say what would have happened; except a change of the
    lexing settings, which would make the gateway itself misread the session (the server's
    report of it would end the session anyway): that is refused in every mode."""
    if verdict.decision is Decision.BLOCK and verdict.rule.endswith("/lexer-setting"):
        return verdict
    prepares = tuple((name, _shadow(inner)) for name, inner in verdict.prepares)
    return Verdict(
        Decision.ALLOW,
        "observe/shadow",
        f"would {verdict.decision.value}: {verdict.rule}: {verdict.reason}",
        shadow_decision=verdict.decision,
        prepares=prepares,
        executes=verdict.executes,
        deallocates=verdict.deallocates,
        copy=verdict.copy,
        statement_count=verdict.statement_count,
        tables=verdict.tables,
        lineage=verdict.lineage,
        stored=verdict.stored,
        controls=verdict.controls,
        declares=verdict.declares,
        fetches=verdict.fetches,
        closes=verdict.closes,
        transactions=verdict.transactions,
        rehearse=verdict.rehearse,
    )
