"""The one place a statement's final verdict is composed.

The policy engine judges a statement's text (`broker.policy`). What the gateway then adds,
and only here:

- SQL ``EXECUTE p`` runs what ``p`` prepared: it takes the stricter of the two verdicts, and
  its rows the lineage of ``p``'s query; a name the gateway cannot account for is refused;
- SQL ``FETCH c`` returns the rows of what ``c`` was declared for; a cursor the gateway did
  not see declared (one a function opened) is masked whole;
- a write that would store masked values under unmasked names goes to review
  (`masking/stored-unmasked`, the masker's call: `review_stored`);
- a statement whose result depends on a masked column other than by showing it masked (a
  WHERE, ORDER BY, LIMIT, CASE condition ... on it: `broker.policy.flow.controls`) goes to
  review, or is blocked, as the column's masking rule says (`masking/inference`:
  `review_inference`);
- ``COPY ... TO STDOUT`` in the extended protocol must name its columns when results are
  masked (the gateway cannot look them up in the middle of a pipeline);
- a fast-path FunctionCall is judged as ``SELECT schema.function()``.

Pure: the names a session knows come in as lookups (`Names`), so `jitgate policy check`
(which has no session) calls the same function with ``names=None``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Protocol

from broker.policy.flow import UNKNOWN, merge
from broker.policy.model import Decision, Lineage, Verdict

STORED_RULE = "masking/stored-unmasked"
INFERENCE_RULE = "masking/inference"

#: The lineage of rows whose source the gateway cannot know: every field counts as derived
#: from an unnamed (so masked) column.
_ANYTHING = ((None, frozenset({UNKNOWN})),)
ANY_SOURCE = Lineage(head=(), starred=True, loose=_ANYTHING, named=_ANYTHING)


class StoredChecker(Protocol):
    def exposed(self, stored: Any) -> list[str]: ...
    def inferred(self, controls: Any) -> list[tuple[str, str, Any]]: ...


class Names(Protocol):
    """What a session knows of its prepared statements and cursors."""

    def prepared(self, name: str) -> Verdict | None:
        """The verdict of what `name` prepared; None when the gateway cannot account for it."""

    def cursor_rows(self, name: str) -> Lineage | None:
        """The lineage of cursor `name`'s rows; ANY_SOURCE when unknown."""


@dataclass(frozen=True, slots=True)
class Context:
    masker: StoredChecker | None = None
    names: Names | None = None
    extended: bool = False  # the statement came in a Parse


def decide(verdict: Verdict, ctx: Context) -> Verdict:
    """The final verdict of a statement the policy judged `verdict` (see the module doc)."""
    names = ctx.names
    several = verdict.statement_count > 1
    if names is not None and verdict.executes and verdict.decision is not Decision.BLOCK:
        lineages: list[Lineage | None] = []
        strictest, stored, controls = verdict, list(verdict.stored), list(verdict.controls)
        rehearse = verdict.rehearse  # EXECUTE p writes what p writes: rehearsed alike
        for name in verdict.executes:
            # In a string of several statements, EXECUTE p may run a PREPARE p of the string
            # or the p the session had before it (the order is not kept): all count.
            candidates = [inner for prepared, inner in verdict.prepares if prepared == name]
            known = names.prepared(name)
            if known is not None and (several or not candidates):
                candidates.append(known)
            if not candidates:
                refused = Verdict(
                    Decision.BLOCK,
                    "gateway/unknown-prepared",
                    f"EXECUTE of prepared statement {name!r} that the gateway cannot account for",
                )
                if verdict.shadow_decision is not None:  # observe: forwarded, recorded as refused
                    return replace(refused, decision=verdict.decision, shadow_decision=Decision.BLOCK)
                return refused
            for inner in candidates:
                lineages.append(inner.lineage)
                stored.extend(inner.stored)
                controls.extend(inner.controls)
                rehearse = rehearse or inner.rehearse
                if inner.decision > strictest.decision:
                    strictest = inner
        verdict = replace(
            verdict,
            decision=strictest.decision,
            rule=strictest.rule,
            reason=strictest.reason,
            stored=tuple(stored),
            controls=tuple(controls),
            rehearse=rehearse,
        )
        verdict = _rows_of(verdict, verdict.lineage, lineages)
    if names is not None and verdict.fetches:
        lineages = []
        for name in verdict.fetches:
            if name in verdict.declares:
                lineages.append(verdict.lineage)
                if not several or (verdict.cursor_only and names.cursor_rows(name) is ANY_SOURCE):
                    continue  # (with nothing but cursor statements, only a DECLARE opens one)
            lineages.append(names.cursor_rows(name))  # a cursor the string closes and re-declares, too
        verdict = _rows_of(verdict, verdict.lineage, lineages)
    if verdict.stored:
        verdict = review_stored(verdict, ctx.masker)
    if verdict.controls:
        verdict = review_inference(verdict, ctx.masker)
    copy = verdict.copy
    if (
        ctx.extended
        and copy is not None
        and copy.direction == "to_stdout"
        and ctx.masker is not None
        and not copy.columns
        and verdict.decision is Decision.ALLOW
    ):
        return Verdict(
            Decision.BLOCK,
            "gateway/copy-masking",
            "COPY TO STDOUT in the extended protocol needs an explicit column list for masking",
        )
    return verdict


def function_call_sql(schema: str, function: str) -> str:
    """A fast-path call, as the SQL the policy judges it as."""
    schema, function = (part.replace('"', '""') for part in (schema, function))
    return f'SELECT "{schema}"."{function}"()'


def review_stored(verdict: Verdict, masker: StoredChecker | None) -> Verdict:
    """`verdict`, or a review of it when it stores masked values under unmasked names
    (``create table x as select reverse(api_key) k ...``: reads of x would not mask them)."""
    if not verdict.stored or masker is None:
        return verdict
    exposed = masker.exposed(verdict.stored)
    if not exposed:
        return verdict
    reason = "it writes values derived from masked columns where later reads are not masked: " + "; ".join(exposed)
    return _stricter(verdict, Decision.REVIEW, STORED_RULE, reason)


def review_inference(verdict: Verdict, masker: StoredChecker | None) -> Verdict:
    """`verdict`, or a review (or block) of it when its result depends on a masked column
    other than by showing it masked: which rows come back, how many, in what order or how
    fast (``where substr(ssn, 1, 1) = '6'``); the reason names each column and how."""
    if not verdict.controls or masker is None:
        return verdict
    found = masker.inferred(verdict.controls)
    if not found:
        return verdict
    decision = Decision.BLOCK if any(mode.value == "block" for _, _, mode in found) else Decision.REVIEW
    by_column: dict[str, list[str]] = {}
    for column, how, _ in found:
        by_column.setdefault(column, []).append(how)
    detail = "; ".join(f"{column} through {', '.join(hows)}" for column, hows in by_column.items())
    reason = f"its result depends on masked data other than through a masked output: {detail}"
    return _stricter(verdict, decision, INFERENCE_RULE, reason)


def _stricter(verdict: Verdict, decision: Decision, rule: str, reason: str) -> Verdict:
    """`verdict` with `decision` when that is stricter; in observe mode only as what would
    have happened (the statement is still forwarded)."""
    if verdict.shadow_decision is not None:
        if decision <= verdict.shadow_decision:
            return verdict
        return replace(verdict, shadow_decision=decision, reason=f"would {decision.value}: {rule}: {reason}")
    if decision <= verdict.decision:
        return verdict
    return replace(verdict, decision=decision, rule=rule, reason=reason)


def _rows_of(verdict: Verdict, own: Lineage | None, named: list[Lineage | None]) -> Verdict:
    """EXECUTE p and FETCH c return the rows of what p prepared or c declared: mask them by
    that lineage. In a string of several statements, or with several candidates, by every
    name any of them may give."""
    single = verdict.statement_count == 1 and len(named) == 1
    return replace(verdict, lineage=named[0] if single else merge([own, *named]))
