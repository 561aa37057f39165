"""Policy files: a preset, operator rules, and overrides per resource and per OIDC group.

Format (YAML; every key is optional)::

    preset: agent-safe              # agent-safe (default) | read-only | observe
    notify_channels: [jobs]         # NOTIFY / pg_notify may use these channels only (default: none)
    max_rows_without_review: 100    # an allowed write changing more rows of a table is parked
    max_rows_per_table: {audit_log: 10000, "staging.*": 5000}   # globs; first match wins
    timeouts:                       # gateway-set session timeouts, also the ceilings an agent
      lock_timeout: 5s              #   may lower but not raise or disable (0); PostgreSQL units,
      statement_timeout: 5min       #   ms without one; only at the top level and per resource
      idle_in_transaction_session_timeout: 3min
    rules:                          # operator rules, checked before the preset's own
      - id: no-touching-payments    # letters, digits, - _ . : (no "/": presets use it)
        match:                      # all given conditions must hold; {} matches anything
          kinds: [update, delete]   # statement kinds or tags (broker.policy.kinds)
          tables: [payments, "billing.*"]   # touched anywhere in the statement; globs
          functions: ["pg_sleep"]   # called anywhere in the statement; globs
          settings: [search_path]   # for kind set/reset: the setting changed
          where: missing            # missing (or always true, like 1=1) | present
        decision: review            # allow | review | block
        reason: payments changes need a DBA      # may use {kind} {tables} {functions} ...
        override: false             # true: may replace a preset block (a guard)
    resources:                      # by resource name, as clients address it
      prod:
        preset: read-only
        notify_channels: []         # the most specific scope naming a key decides
        timeouts: {statement_timeout: 30s}
        rules: [...]
        groups:                     # this resource, for members of these groups
          dba: {rules: [...]}
    groups:                         # OIDC groups, on every resource
      dba:
        rules:
          - {id: dba-may-truncate, match: {kinds: [truncate]}, decision: allow}

Which rules apply: for a caller with groups G on resource R, the operator rules are, in this
order, those of ``resources.R.groups.g`` (for each g in G, in file order), ``resources.R``,
``groups.g`` (each g in G, in file order), and the top level; the first matching rule wins
(see `judge` for how they meet the preset). The preset is the one named by the most specific
of those scopes that names one. Resource rules come before group rules so that protecting an
environment cannot be undone by a group's general rules; to make an exception for a group on
one resource, use ``resources.R.groups``.

Preset blocks (ALTER SYSTEM, SET ROLE, file functions ...) are *guards*: a rule only
replaces one with ``override: true``, and a rule that names a guarded kind with a looser
decision but without ``override`` is an error, so that nobody believes they loosened
something they did not. Unparseable SQL is always blocked.

``notify_channels`` and each ``timeouts`` entry come from the most specific scope that names
them, like the preset. Channel names are compared as the server sees them: ``NOTIFY Jobs``
folds to ``jobs``, ``pg_notify('Jobs', ...)`` does not. A channel that is not known before
the statement runs (``pg_notify($1, ...)``, ``pg_notify(col, ...)``) is never listed.

Every problem is reported as ``<key path>: <why>``, e.g. ``rules[2].decision: must be one of
allow, review, block``, all of them at once, in one `PolicyConfigError`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from .exceptions import PolicyConfigError
from .kinds import KINDS, TAGS
from .model import Decision
from .presets import PRESETS
from .rules import Match, NamePattern, Rule
from .timeouts import TIMEOUT_SETTINGS, parse_ms

__all__ = ["PolicyDocument", "Scope", "load_policy", "parse_policy"]

_DECISIONS = ("allow", "review", "block")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_NAME = re.compile(r"[A-Za-z0-9_*?\[\]$\"-]+(\.[A-Za-z0-9_*?\[\]$\"-]+)*")


def _choice(value: str, choices: tuple[str, ...] | frozenset[str], what: str) -> str:
    if value in choices:
        return value
    ordered = sorted(choices) if isinstance(choices, frozenset) else list(choices)
    if len(ordered) <= 4:
        raise ValueError(f"must be one of {', '.join(ordered)}")
    close = difflib.get_close_matches(value, ordered, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ValueError(f"unknown {what} {value!r}{hint}")


def _check_kind(value: str) -> str:
    return _choice(value, KINDS | TAGS, "statement kind or tag")


def _check_decision(value: str) -> str:
    return _choice(value, _DECISIONS, "decision")


def _check_preset(value: str) -> str:
    return _choice(value, tuple(PRESETS), "preset")


def _check_where(value: str) -> str:
    return _choice(value, ("missing", "present"), "where")


def _check_id(value: str) -> str:
    if not _ID.fullmatch(value):
        raise ValueError("must start with a letter or digit and hold only letters, digits, -_.:")
    return value


def _check_channel(value: str) -> str:
    if not value or len(value.encode()) > 63:
        raise ValueError(f"{value!r} is not a channel name (1 to 63 bytes)")
    return value


def _check_timeout(value: str | int) -> int:
    ms = parse_ms(value)
    if ms is None or ms <= 0:
        raise ValueError(
            f"{value!r} is not a positive duration as PostgreSQL reads it (5000 in ms, or 5s, 10min, 1h)"
        )
    return ms


def _check_rows(value: int) -> int:
    if value < 0:
        raise ValueError("must be a number of rows, 0 or more")
    return value


def _check_name(value: str) -> str:
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r} is not a (possibly schema-qualified) name or glob")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class MatchModel(_Strict):
    kinds: list[Annotated[str, AfterValidator(_check_kind)]] | None = None
    tables: list[Annotated[str, AfterValidator(_check_name)]] | None = None
    functions: list[Annotated[str, AfterValidator(_check_name)]] | None = None
    settings: list[str] | None = None
    where: Annotated[str, AfterValidator(_check_where)] | None = None


class RuleModel(_Strict):
    id: Annotated[str, AfterValidator(_check_id)]
    match: MatchModel = MatchModel()
    decision: Annotated[str, AfterValidator(_check_decision)]
    reason: str | None = None
    override: bool = False


Timeout = Annotated[str | int, AfterValidator(_check_timeout)]


class TimeoutsModel(_Strict):
    lock_timeout: Timeout | None = None
    statement_timeout: Timeout | None = None
    idle_in_transaction_session_timeout: Timeout | None = None
    client_connection_check_interval: Timeout | None = None


class ScopeModel(_Strict):
    preset: Annotated[str, AfterValidator(_check_preset)] | None = None
    rules: list[RuleModel] = []
    notify_channels: list[Annotated[str, AfterValidator(_check_channel)]] | None = None


Rows = Annotated[int, AfterValidator(_check_rows)]
TableName = Annotated[str, AfterValidator(_check_name)]


class ResourceModel(ScopeModel):
    groups: dict[str, ScopeModel] = {}
    max_rows_without_review: Rows | None = None
    max_rows_per_table: dict[TableName, Rows] | None = None
    timeouts: TimeoutsModel | None = None


class FileModel(ScopeModel):
    description: str | None = None
    max_rows_without_review: Rows | None = None
    max_rows_per_table: dict[TableName, Rows] | None = None
    timeouts: TimeoutsModel | None = None
    resources: dict[str, ResourceModel] = {}
    groups: dict[str, ScopeModel] = {}


@dataclass(frozen=True, slots=True)
class Scope:
    """The preset (if it names one), the rules and the settings of one part of a policy file."""

    preset: str | None = None
    rules: tuple[Rule, ...] = ()
    notify_channels: frozenset[str] | None = None  # None: not named here
    timeouts: dict[str, int] = field(default_factory=dict)  # ms, the ones named here
    # max_rows_without_review and max_rows_per_table, as named here (None: not named)
    row_limit: int | None = None
    table_limits: tuple[tuple[str, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class PolicyDocument:
    """A loaded policy: the top-level scope, per-resource and per-group scopes."""

    top: Scope = Scope(preset="agent-safe")
    resources: dict[str, Scope] = field(default_factory=dict)
    resource_groups: dict[str, dict[str, Scope]] = field(default_factory=dict)
    groups: dict[str, Scope] = field(default_factory=dict)
    source: str | None = None

    @property
    def scoped(self) -> bool:
        return bool(self.resources or self.groups)

    def scopes_for(self, resource: str | None, groups: tuple[str, ...]) -> Iterator[Scope]:
        """The scopes that apply, most specific first (see the module docstring)."""
        if resource is not None:
            for name, scope in self.resource_groups.get(resource, {}).items():
                if name in groups:
                    yield scope
            if resource in self.resources:
                yield self.resources[resource]
        for name, scope in self.groups.items():
            if name in groups:
                yield scope
        yield self.top


def load_policy(path: str | Path) -> PolicyDocument:
    """Read and check a policy file; raise PolicyConfigError naming every problem."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyConfigError(
            [("", f"cannot read the file: {exc.strerror or exc}")], source=source
        ) from exc
    return parse_policy(text, source=source)


def parse_policy(text: str, *, source: str | None = None) -> PolicyDocument:
    """Check a policy given as YAML text (see the module docstring for the format)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise PolicyConfigError([(where, f"not valid YAML: {problem}")], source=source) from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyConfigError(
            [("", "must be a mapping (preset, rules, resources, groups)")], source=source
        )
    try:
        model = FileModel.model_validate(data)
    except ValidationError as exc:
        raise PolicyConfigError(_pydantic_errors(exc), source=source) from exc
    errors: list[tuple[str, str]] = []
    document = _build(model, errors, source)
    if errors:
        raise PolicyConfigError(errors, source=source)
    return document


def _build(model: FileModel, errors: list[tuple[str, str]], source: str | None) -> PolicyDocument:
    seen: dict[str, str] = {}
    top_preset = model.preset or "agent-safe"

    def scope(m: ScopeModel, path: str, preset: str | None) -> Scope:
        rules = []
        guards = PRESETS[preset or top_preset].guards
        for i, r in enumerate(m.rules):
            where = f"{path}rules[{i}]"
            if r.id in seen:
                errors.append(
                    (f"{where}.id", f"duplicate rule id {r.id!r} (first at {seen[r.id]})")
                )
            seen.setdefault(r.id, where)
            rule = _rule(r)
            _check_guards(rule, guards, where, errors)
            rules.append(rule)
        channels = frozenset(m.notify_channels) if m.notify_channels is not None else None
        timeouts = getattr(m, "timeouts", None)
        named = timeouts.model_dump(exclude_none=True) if timeouts is not None else {}
        per_table = getattr(m, "max_rows_per_table", None)
        return Scope(
            m.preset, tuple(rules), channels, {k: v for k, v in named.items() if k in TIMEOUT_SETTINGS},
            row_limit=getattr(m, "max_rows_without_review", None),
            table_limits=tuple(per_table.items()) if per_table is not None else None,
        )

    top = scope(model, "", top_preset)
    top = Scope(
        top_preset, top.rules, top.notify_channels, top.timeouts,
        row_limit=top.row_limit, table_limits=top.table_limits,
    )
    resources: dict[str, Scope] = {}
    resource_groups: dict[str, dict[str, Scope]] = {}
    for name, res in model.resources.items():
        resources[name] = scope(res, f"resources.{name}.", res.preset)
        resource_groups[name] = {
            group: scope(g, f"resources.{name}.groups.{group}.", g.preset or res.preset)
            for group, g in res.groups.items()
        }
    groups = {name: scope(g, f"groups.{name}.", g.preset) for name, g in model.groups.items()}
    return PolicyDocument(top, resources, resource_groups, groups, source)


def _rule(r: RuleModel) -> Rule:
    m = r.match
    match = Match(
        kinds=frozenset(m.kinds) if m.kinds is not None else None,
        tables=tuple(NamePattern(t) for t in m.tables) if m.tables is not None else None,
        functions=tuple(NamePattern(f) for f in m.functions) if m.functions is not None else None,
        settings=(
            frozenset(s.strip().lower() for s in m.settings) if m.settings is not None else None
        ),
        where="missing" if m.where == "missing" else "present" if m.where == "present" else None,
    )
    decision = Decision(r.decision)
    reason = r.reason or f"policy rule {r.id} ({decision.value})"
    return Rule(r.id, match, decision, reason, override=r.override)


def _check_guards(
    rule: Rule, guards: tuple[Rule, ...], where: str, errors: list[tuple[str, str]]
) -> None:
    """A looser rule naming a guarded kind without override would silently do nothing."""
    if rule.override or rule.decision is Decision.BLOCK or rule.match.kinds is None:
        return
    for guard in guards:
        kinds = guard.match.kinds
        if kinds and guard.match.settings is None and not kinds.isdisjoint(rule.match.kinds):
            named = ", ".join(sorted(kinds & rule.match.kinds))
            errors.append(
                (
                    f"{where}.decision",
                    f"{rule.decision.value} would loosen preset rule {guard.id} ({named}); "
                    "add override: true if that is what you mean",
                )
            )
            return


_MESSAGES = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "bool_type": "must be true or false",
}


def _pydantic_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for error in exc.errors():
        path = ""
        for part in error["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            else:
                path += f".{part}" if path else str(part)
        kind = error["type"]
        message = _MESSAGES.get(kind) or str(error["msg"]).removeprefix("Value error, ")
        if kind == "extra_forbidden":
            message = _unknown_key_message(error["loc"])
        out.append((path, message))
    return out


def _unknown_key_message(loc: tuple[Any, ...]) -> str:
    """Name the keys allowed where an unknown one was found."""
    model: type[BaseModel] = FileModel
    parts = loc[:-1]
    i = 0
    while i < len(parts):
        part = parts[i]
        if part == "rules":
            model, i = RuleModel, i + 2  # skip the list index
        elif part == "match":
            model, i = MatchModel, i + 1
        elif part == "timeouts":
            model, i = TimeoutsModel, i + 1
        elif part == "resources" and model is FileModel:
            model, i = ResourceModel, i + 2  # skip the resource name
        elif part == "groups":
            model, i = ScopeModel, i + 2
        else:
            i += 1
    return f"unknown key (expected one of {', '.join(model.model_fields)})"
