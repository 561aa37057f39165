"""Rules: what to decide when a statement matches.

A `Rule` has an id, a `Match`, a `Decision` and a reason. A `Match` tests one *subject* of a
statement (see `facts.Subject`: the statement itself, each write it hides, each setting it
changes) together with what the whole statement touches:

- ``kinds``: the subject's kind or one of its tags (``delete``, ``drop_table``, ``write``,
  ``ddl``, ``server_side`` ... see `kinds`);
- ``tables``: a table the statement touches, anywhere in it (read or written);
- ``functions``: a function the statement calls, anywhere in it;
- ``settings``: the setting a SET / RESET / set_config subject changes (``role``, ...);
- ``where``: ``missing`` (an UPDATE/DELETE without WHERE, or with one that is always true,
  like ``1=1``) or ``present``.

Every given field must hold; a match with no fields matches everything. Table and function
names are glob patterns (``payments``, ``audit_*``, ``dblink*``, ``pg_catalog.pg_read_file``)
compared with the names as PostgreSQL folds them (unquoted names in lower case). A pattern
without a schema matches the name in any schema; a pattern with a schema also matches a name
written without one, because the session's search_path decides where that name resolves.

A reason may mention ``{kind}``, ``{tables}``, ``{functions}``, ``{setting}``, ``{language}``,
``{where}`` and ``{body}`` (what the code of a DO block or function body runs: ``UPDATE
orders, INSERT INTO audit``); they are filled in from the statement that matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import translate
from typing import Literal

from .facts import StatementFacts, Subject
from .model import Decision

__all__ = ["Match", "NamePattern", "Rule", "render_reason"]


@dataclass(frozen=True, slots=True)
class NamePattern:
    """A glob over a possibly schema-qualified name (see the module docstring)."""

    text: str
    _schema: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _name: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        schema, dot, name = self.text.rpartition(".")
        object.__setattr__(self, "_schema", re.compile(translate(schema)) if dot else None)
        object.__setattr__(self, "_name", re.compile(translate(name)))

    def matches(self, dotted: str) -> bool:
        schema, dot, name = dotted.rpartition(".")
        if not self._name.match(name):
            return False
        if self._schema is None or not dot:
            return True
        return bool(self._schema.match(schema.rpartition(".")[2]))

    def __str__(self) -> str:
        return self.text


def _any(patterns: tuple[NamePattern, ...], names: dict[str, None]) -> list[str]:
    return [name for name in names if any(p.matches(name) for p in patterns)]


@dataclass(frozen=True, slots=True)
class Match:
    """Conditions on a subject and its statement; None means "any"."""

    kinds: frozenset[str] | None = None
    tables: tuple[NamePattern, ...] | None = None
    functions: tuple[NamePattern, ...] | None = None
    settings: frozenset[str] | None = None
    where: Literal["missing", "present"] | None = None

    def matches(self, subject: Subject, statement: StatementFacts) -> bool:
        if self.kinds is not None and subject.kind not in self.kinds:
            if self.kinds.isdisjoint(subject.tags):
                return False
        if self.where is not None:
            if subject.where is None:
                return False
            if (subject.where == "present") != (self.where == "present"):
                return False
        if self.settings is not None and subject.setting not in self.settings:
            return False
        if self.tables is not None and not _any(self.tables, statement.tables):
            return False
        if self.functions is not None and not _any(self.functions, statement.functions):
            return False
        return True

    def matched_functions(self, statement: StatementFacts) -> list[str]:
        if self.functions is None:
            return list(statement.functions)
        return _any(self.functions, statement.functions)


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule. `guard` rules (preset blocks) are checked before an operator's rules, and
    only an operator rule with `override` set can stand in for one."""

    id: str
    match: Match
    decision: Decision
    reason: str
    guard: bool = False
    override: bool = False


_FIELD = re.compile(r"\{(kind|tables|functions|setting|language|where|body)\}")
# A card has room for a few lines of it; the statement's text is on the card too.
_BODY_ITEMS = 6

_WHERE_TEXT = {
    "missing": "without a WHERE clause",
    "always_true": "with a WHERE clause that is always true",
    "present": "with a WHERE clause",
}


def render_reason(rule: Rule, subject: Subject, statement: StatementFacts) -> str:
    """The rule's reason with ``{field}`` references filled in for this statement."""
    if "{" not in rule.reason:
        return rule.reason

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "kind":
            return subject.kind.replace("_", " ").upper()
        if name == "tables":
            return ", ".join(statement.tables) or "(no table)"
        if name == "functions":
            return ", ".join(rule.match.matched_functions(statement)) or "(no function)"
        if name == "setting":
            return subject.setting or "(computed name)"
        if name == "language":
            return subject.language or "(none given)"
        if name == "body":
            return _body(statement.code)
        return _WHERE_TEXT.get(subject.where or "", "")

    return _FIELD.sub(value, rule.reason)


def _body(code: tuple[str, ...]) -> str:
    if not code:
        return "no SQL statement"
    shown = ", ".join(code[:_BODY_ITEMS])
    more = len(code) - _BODY_ITEMS
    return f"{shown} and {more} more" if more > 0 else shown
