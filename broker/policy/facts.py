"""What a statement does, read from its parse tree.

`extract(sql)` parses with pglast (libpg_query: PostgreSQL's own parser) and walks the tree
of every statement in the string. It decides nothing; it reports facts that rules match on:

- the statement's *subjects*: the statement itself, plus every write it hides (a
  data-modifying CTE, the statement under ``EXPLAIN ANALYZE``, under ``PREPARE``, inside
  ``COPY (...) TO``, inside a function body or DO block, inside a SQL string given to
  ``query_to_xml``), plus the settings that ``set_config(...)`` calls change (and an
  UPDATE of ``pg_settings`` or a view over it, which changes settings by name). Each subject
  has a kind and tags (`kinds`), a WHERE state for UPDATE/DELETE, and the setting name for
  SET. A DO block or function whose body does not parse, or runs SQL built at run time
  (`bodies`), is tagged ``unreadable_code`` / ``runtime_sql``; so is a string-running
  function given a query that is not a literal;
- what the code of a DO block or function body runs, in a few words for people
  (`StatementFacts.code`);
- the functions called anywhere in the tree (as written: ``pg_read_file``,
  ``pg_catalog.pg_read_file``), in subqueries, defaults, casts, CTEs, arguments, ORDER BY,
  function bodies ...;
- the tables touched anywhere (CTE names excluded);
- SQL-level ``EXECUTE`` / ``DEALLOCATE`` names, the ``PREPARE`` name and inner statement,
  and COPY's data format (`model.CopyInfo`);
- `Facts.literal_sensitive`: whether any of this depended on a literal's value (a constant
  WHERE, a set_config name, a COPY option, a function body). See `normalize` for why.

The tree comes from libpg_query's JSON output rather than `pglast.parse_sql`: building
pglast's Python node objects costs several times the parse itself, and this runs for every
statement shape the proxy has not seen yet. In that JSON a node is ``{"TypeName": {fields}}``
except where a field's C type names the node type (``relation`` is a bare RangeVar,
``CallStmt.funccall`` a bare FuncCall); the walker handles both.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pglast import parser as pg

from .bodies import do_block_code, plpgsql_code
from .copyinfo import copy_info, deparse_copy_query
from .flow import UNKNOWN as UNKNOWN_SOURCE
from .flow import controls, lineage, stored
from .flow.tree import TooDeep, loads
from .kinds import statement_kind, tags_for
from .model import CopyInfo, Lineage
from .timeouts import TIMEOUT_SETTINGS, parse_ms
from .where_folding import UNKNOWN, Reader, parse_bool

__all__ = [
    "LEXER_SETTINGS", "PINNED_LEXER_VALUES", "Facts", "StatementFacts", "Subject", "extract",
    "is_pinned_value",
]  # fmt: skip

Node = dict[str, Any]
WhereState = Literal["present", "missing", "always_true"]

TRUSTED_LANGUAGES = frozenset({"sql", "plpgsql"})
# Functions that run SQL handed to them as a string (or build it from strings they are given:
# tablefunc's connectby, xml2's xpath_table): the policy must read that string.
DYNAMIC_SQL_FUNCTIONS = frozenset(
    {
        "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat", "ts_rewrite",
        "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby", "xpath_table",
    }
)  # fmt: skip
# The positions where each of them takes SQL (or names it builds SQL from); None: all. An
# argument there, or given by name (any name: a wrong one fails anyway), that is not a literal
# is SQL built at run time, which nobody can check before it runs (tag ``runtime_sql``).
_SQL_ARGUMENTS: dict[str, tuple[int, ...] | None] = {
    "query_to_xml": (0,), "query_to_xmlschema": (0,), "query_to_xml_and_xmlschema": (0,),
    "ts_stat": (0,), "ts_rewrite": (1,),  # ts_rewrite(query, select), not (query, target, with)
    "crosstab": (0, 1), "crosstab2": (0,), "crosstab3": (0,), "crosstab4": (0,),
    "connectby": None, "xpath_table": None,
}  # fmt: skip
# Functions that read whole relations (or a cursor) named in an argument and return their rows
# as one text value: the parse tree names no column, so neither lineage nor the masking rules
# can follow what they return. Judged like dynamic SQL.
WHOLE_RELATION_FUNCTIONS = frozenset(
    {
        "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema",
        "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema",
        "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
        "cursor_to_xml", "cursor_to_xmlschema",
    }
)  # fmt: skip
# Settings that change how the server reads the bytes of a query: where a string literal
# ends, and which bytes form one character. If the server read quotes differently from the
# gateway's parser, text the gateway saw as a literal could run as SQL. The gateway pins each
# to one value (`PINNED_LEXER_VALUES`, also sent in every upstream start-up packet, so RESET
# and DISCARD ALL return to it); a SET, set_config or function SET clause to that value is a
# no-op and allowed, any other value is tagged ``unsafe_lexer_setting``.
# escape_string_warning is not here: it only decides whether a WARNING is raised, and only
# while standard_conforming_strings is off.
LEXER_SETTINGS = frozenset({"standard_conforming_strings", "client_encoding", "backslash_quote"})
PINNED_LEXER_VALUES = {
    "client_encoding": "UTF8",
    "standard_conforming_strings": "on",
    "backslash_quote": "safe_encoding",
}
# pg_settings has an ON UPDATE rule that calls set_config(name, setting): an UPDATE of it (or
# of a view over it) changes the settings its WHERE clause picks, names decided at run time.
SETTINGS_VIEW = "pg_settings"


@dataclass(frozen=True, slots=True)
class Subject:
    """One thing a statement does, as rules see it."""

    kind: str
    tags: frozenset[str]
    where: WhereState | None = None  # UPDATE / DELETE only
    setting: str | None = None  # SET / RESET / set_config: the setting's name, lower case
    language: str | None = None  # CREATE FUNCTION / DO
    # NOTIFY / pg_notify: the channel, as the server names it; None: not known statically.
    channel: str | None = None
    # SET / set_config of a `timeouts.TIMEOUT_SETTINGS` value: in ms as the server reads it;
    # None: not a literal (or not one the server accepts).
    timeout_ms: int | None = None
    # A write whose row count the text does not bound (UPDATE, DELETE, MERGE, INSERT ...
    # SELECT, INSERT ... ON CONFLICT DO UPDATE): the proxy rehearses it (proxy.rehearsal).
    unbounded: bool = False


@dataclass(slots=True)
class StatementFacts:
    """The facts of one statement of a (possibly multi-statement) string."""

    kind: str
    subjects: list[Subject] = field(default_factory=list)
    functions: dict[str, None] = field(default_factory=dict)  # dotted names, in order
    tables: dict[str, None] = field(default_factory=dict)
    executes: list[str] = field(default_factory=list)
    deallocates: list[str | None] = field(default_factory=list)
    prepare: tuple[str, StatementFacts] | None = None
    declares: list[str] = field(default_factory=list)  # DECLARE name CURSOR FOR ...
    fetches: list[str] = field(default_factory=list)  # FETCH ... FROM name (rows come back)
    closes: list[str | None] = field(default_factory=list)  # CLOSE name; None: CLOSE ALL
    copy: CopyInfo | None = None
    lineage: Lineage | None = None  # where the result columns come from (`lineage`)
    # Values it writes into relations under other names (`flow.stored`): (where, sources).
    stored: tuple[tuple[str, frozenset[str]], ...] = ()
    # Values its result depends on other than as outputs (`flow.controls`): (how, sources).
    controls: tuple[tuple[str, frozenset[str]], ...] = ()
    # What the code of a DO block or function body runs, for people: "UPDATE orders",
    # "EXECUTE q" (an expression run as SQL). See `rules.render_reason`'s ``{body}``.
    code: tuple[str, ...] = ()


@dataclass(slots=True)
class Facts:
    """Everything `extract` learned about a statement string."""

    statements: list[StatementFacts]
    error: str | None = None  # the parser's message when the text does not parse
    literal_sensitive: bool = False


def extract(sql: str) -> Facts:
    """Parse `sql` and report what each of its statements does. Never raises."""
    return _Extractor(sql).run()


# -- parsing -----------------------------------------------------------------------------

def _parse_json(sql: str) -> Any:
    return loads(pg.parse_sql_json(sql))


class _Extractor:
    """Shared state of one `extract` call, including statements found in nested SQL."""

    def __init__(self, sql: str) -> None:
        self.sql = sql
        self.sensitive = False
        self.reader = Reader(self.read_literal)
        self._utf8: bytes | None = None
        self._depth = 0

    def read_literal(self) -> None:
        self.sensitive = True

    def run(self) -> Facts:
        try:
            tree = _parse_json(self.sql)
        except pg.ParseError as exc:
            return Facts([], error=str(exc), literal_sensitive=True)
        except (RecursionError, TooDeep):
            return Facts([], error="statement nested too deeply to check", literal_sensitive=True)
        statements = []
        for raw in tree.get("stmts", []):
            builder = _Statement(self, raw, self.sql)
            builder.top(raw["stmt"])
            statements.append(builder.finish())
        return Facts(statements, literal_sensitive=self.sensitive)

    def nested(self, sql: str) -> list[StatementFacts] | None:
        """Facts of SQL found inside a literal (a function body, query_to_xml's argument)."""
        self.sensitive = True
        if self._depth > 8:  # a literal inside a literal inside ...: stop looking
            return None
        try:
            tree = _parse_json(sql)
        except (pg.ParseError, RecursionError, TooDeep):
            return None
        self._depth += 1
        try:
            out = []
            for raw in tree.get("stmts", []):
                builder = _Statement(self, raw, sql)
                builder.top(raw["stmt"])
                out.append(builder.finish())
            return out
        finally:
            self._depth -= 1


# -- one statement ------------------------------------------------------------------------


class _Statement:
    """Walks one statement's tree, collecting its facts."""

    def __init__(self, extractor: _Extractor, raw: Node, source: str) -> None:
        self.ex = extractor
        self.raw = raw
        self.source = source  # the text `raw` was parsed from
        self.facts = StatementFacts(kind="")
        self.ctes: set[str] = set()

    def finish(self) -> StatementFacts:
        facts = self.facts
        if self.ctes:
            facts.tables = {t: None for t in facts.tables if t not in self.ctes}
        return facts

    def add(self, kind: str, **extra: Any) -> None:
        self.facts.subjects.append(Subject(kind, tags_for(kind), **extra))

    # The statement itself ------------------------------------------------------------

    def top(self, node: Node) -> None:
        ((name, f),) = node.items()
        kind = statement_kind(name, f)
        if not self.facts.kind:
            self.facts.kind = kind
            self.facts.lineage = _safe_lineage(node)
            self.facts.stored = _safe_stored(node)
            self.facts.controls = _safe_controls(node, self.ex.read_literal)
        if name == "DeclareCursorStmt":
            self.facts.declares.append(str(f.get("portalname", "")))
        elif name == "FetchStmt" and not f.get("ismove"):
            self.facts.fetches.append(str(f.get("portalname", "")))
        elif name == "ClosePortalStmt":
            self.facts.closes.append(str(f["portalname"]) if f.get("portalname") else None)
        handler = _TOP_HANDLERS.get(name)
        if handler is not None:
            handler(self, f, kind)
            return
        self.add(kind)
        self.walk(f)

    def _dml(self, f: Node, kind: str) -> None:
        self.facts.subjects.append(self.dml_subject(kind, f))
        self.walk(f)

    def dml_subject(self, kind: str, f: Node) -> Subject:
        if kind in ("update", "merge") and _is_settings_view(f.get("relation")):
            # It also changes settings: those its WHERE picks (see SETTINGS_VIEW).
            self.facts.subjects.append(Subject("set", tags_for("set") | {"dynamic_setting"}))
        where: WhereState | None = None
        if kind in ("update", "delete"):
            clause = f.get("whereClause")
            if clause is None:
                where = "missing"
            elif self.ex.reader.truth(clause) is True:
                where = "always_true"
            else:
                where = "present"
        return Subject(kind, tags_for(kind), where=where, unbounded=_unbounded(kind, f))

    def _explain(self, f: Node, kind: str) -> None:
        self.add(kind)
        query = f.get("query", {})
        if self._explain_analyze(f.get("options", [])):
            self.top(query)  # it runs: judge it as the statement itself
            self.facts.stored += _safe_stored(query)
        else:
            self.walk(query, executing=False)

    def _explain_analyze(self, options: list[Node]) -> bool:
        analyze = False
        for option in options:
            d = option.get("DefElem", {})
            if d.get("defname") == "analyze":
                analyze = self._option_flag(d)
        return analyze

    def _option_flag(self, d: Node) -> bool:
        """A boolean option: bare (true), or with a literal argument (on/off/1/0/...)."""
        arg = d.get("arg")
        if arg is None:
            return True
        value = self._literal(arg)
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return value != 0
        parsed = parse_bool(str(value)) if isinstance(value, str) else None
        return True if parsed is None else parsed  # unreadable: assume the riskier reading

    def _prepare(self, f: Node, kind: str) -> None:
        self.add(kind)
        inner = _Statement(self.ex, self.raw, self.source)
        inner.top(f.get("query", {}))
        inner_facts = inner.finish()
        self.facts.prepare = (str(f.get("name", "")), inner_facts)
        self.facts.stored += inner_facts.stored
        self.facts.controls += inner_facts.controls
        # PREPARE takes the decision of what it prepares.
        self.facts.subjects.extend(inner_facts.subjects)
        self.facts.functions.update(inner_facts.functions)
        self.facts.tables.update(inner_facts.tables)

    def _execute(self, f: Node, kind: str) -> None:
        self.add(kind)
        self.facts.executes.append(str(f.get("name", "")))
        self.walk(f.get("params", []))

    def _deallocate(self, f: Node, kind: str) -> None:
        self.add(kind)
        self.facts.deallocates.append(None if f.get("isall") else str(f.get("name", "")))

    def _discard(self, f: Node, kind: str) -> None:
        self.add(kind)
        if f.get("target", "DISCARD_ALL") == "DISCARD_ALL":
            self.facts.deallocates.append(None)  # DISCARD ALL includes DEALLOCATE ALL
            self.facts.closes.append(None)  # and CLOSE ALL

    def _copy(self, f: Node, kind: str) -> None:
        self.ex.read_literal()  # options are literals, and CopyInfo carries them
        is_from = bool(f.get("is_from"))
        kind = "copy_from" if is_from else "copy_to"
        self.facts.kind = kind if self.facts.kind == "copy" else self.facts.kind
        tags = tags_for(kind)
        if f.get("is_program") or f.get("filename") is not None:
            tags = tags | {"server_side"}
        self.facts.subjects.append(Subject(kind, tags))
        self.facts.copy = self._copy_info(f)
        self.walk(f)

    def _set(self, f: Node, kind: str) -> None:
        self.facts.subjects.append(self._set_subject(f, kind))

    def _set_subject(self, f: Node, kind: str) -> Subject:
        setting = str(f.get("name") or "all").lower()
        tags = tags_for(kind)
        timeout_ms: int | None = None
        if setting in LEXER_SETTINGS and f.get("kind", "VAR_SET_VALUE") == "VAR_SET_VALUE":
            args = f.get("args", [])
            value = self._literal(args[0]) if len(args) == 1 else UNKNOWN
            if _unsafe_lexer_value(setting, value):
                tags = tags | {"unsafe_lexer_setting"}
        if setting in TIMEOUT_SETTINGS and f.get("kind", "VAR_SET_VALUE") == "VAR_SET_VALUE":
            # The judge compares it with the policy's ceiling (FROM CURRENT: unknown, too).
            args = f.get("args", [])
            timeout_ms = parse_ms(self._literal(args[0])) if len(args) == 1 else None
        return Subject(kind, tags, setting=setting, timeout_ms=timeout_ms)

    def _view(self, f: Node, kind: str) -> None:
        self.add(kind)
        self.walk(f)
        # A simple view over pg_settings is updatable, and its UPDATE is pg_settings'.
        if any(_is_settings_view_name(name) for name in self.facts.tables):
            self.facts.subjects.append(Subject("set", tags_for("set") | {"dynamic_setting"}))

    def _alter_with_set(self, f: Node, kind: str) -> None:
        # ALTER DATABASE/ROLE/SYSTEM ... SET x: the setting applies to later sessions.
        self.add(kind)
        setstmt = f.get("setstmt")
        if isinstance(setstmt, dict) and setstmt.get("name"):
            set_kind = statement_kind("VariableSetStmt", setstmt)
            self.facts.subjects.append(self._set_subject(setstmt, set_kind))

    def _create_function(self, f: Node, kind: str) -> None:
        language: str | None = None
        bodies: list[str] = []
        for option in f.get("options", []):
            d = option.get("DefElem", {})
            if d.get("defname") == "language":
                value = self._literal(d.get("arg", {}))
                language = value.strip().lower() if isinstance(value, str) else None
            elif d.get("defname") == "as":
                bodies = [v for v in self._literals(d.get("arg")) if isinstance(v, str)]
        if language is None and "sql_body" in f:
            language = "sql"
        self._code(kind, language, bodies, is_do=False)
        self.walk(f)

    def _do(self, f: Node, kind: str) -> None:
        language = "plpgsql"
        bodies: list[str] = []
        for option in f.get("args", []):
            d = option.get("DefElem", {})
            value = self._literal(d.get("arg", {}))
            if d.get("defname") == "language" and isinstance(value, str):
                language = value.strip().lower()
            elif d.get("defname") == "as" and isinstance(value, str):
                bodies = [value]
        self._code(kind, language, bodies, is_do=True)

    def _code(self, kind: str, language: str | None, bodies: list[str], *, is_do: bool) -> None:
        """Code the server will run later: judge the SQL inside it as if it ran now. Code the
        gateway cannot read, or SQL built at run time, is tagged (blocked by the presets)."""
        tags = tags_for(kind)
        if language not in TRUSTED_LANGUAGES:
            tags = tags | {"untrusted_language"}
        at = len(self.facts.subjects)
        self.facts.subjects.append(Subject(kind, tags, language=language))  # first: its reason
        runs: list[str] = []
        texts: list[str]
        dynamic: tuple[str, ...]
        for body in bodies:
            if language == "sql":
                texts, dynamic = [body], ()
            elif language == "plpgsql":
                self.ex.read_literal()
                code = do_block_code(body) if is_do else plpgsql_code(self.text())
                if code is None:
                    tags = tags | {"unreadable_code"}
                    continue
                texts, dynamic = list(code.statements), code.dynamic
            else:
                continue
            for text in texts:
                inner = self.ex.nested(text)
                if inner is None:
                    tags = tags | {"unreadable_code"}
                    continue
                self._merge(inner)
                runs.extend(_summary(statement) for statement in inner)
            if dynamic:
                tags = tags | {"runtime_sql"}
                runs.extend(f"EXECUTE {_shortened(expression)}" for expression in dynamic)
        self.facts.subjects[at] = Subject(kind, tags, language=language)
        self.facts.code += tuple(entry for entry in dict.fromkeys(runs) if entry)

    def _drop(self, f: Node, kind: str) -> None:
        self.add(kind)
        if f.get("removeType", "OBJECT_TABLE") in _RELATION_OBJECTS:
            for obj in f.get("objects", []):
                items = obj.get("List", {}).get("items", []) if isinstance(obj, dict) else []
                names = [i["String"].get("sval", "") for i in items if "String" in i]
                if names:
                    self.facts.tables[".".join(names)] = None
        self.walk(f)

    def text(self) -> str:
        """This statement's source text (libpg_query locations are UTF-8 byte offsets)."""
        data = self.source.encode("utf-8")
        start = self.raw.get("stmt_location", 0)
        length = self.raw.get("stmt_len", 0) or len(data) - start
        return data[start : start + length].decode("utf-8", "replace")

    def _call(self, f: Node, kind: str) -> None:
        self.add(kind)
        call = f.get("funccall")
        if isinstance(call, dict):
            self.walk({"FuncCall": call})

    def _merge(self, statements: list[StatementFacts] | None) -> None:
        for inner in statements or ():
            self.facts.subjects.extend(inner.subjects)
            self.facts.functions.update(inner.functions)
            self.facts.tables.update(inner.tables)
            self.facts.executes.extend(inner.executes)
            self.facts.stored += inner.stored
            self.facts.controls += inner.controls

    # Walking the tree ---------------------------------------------------------------

    def walk(self, root: Any, *, executing: bool = True) -> None:
        """Visit every node under `root`. `executing` is False under plain EXPLAIN, whose
        statement is planned but not run: writes there are not subjects, but functions are
        still collected (the planner may evaluate them, and it costs nothing to be strict)."""
        stack: list[Any] = [root]
        push = stack.extend
        facts = self.facts
        # Hot loop on a cache miss: scalars are pushed too and skipped when popped, which
        # costs less than filtering them out with a generator.
        while stack:
            item = stack.pop()
            kind = type(item)
            if kind is list:
                push(reversed(item))
                continue
            if kind is not dict:
                continue
            if len(item) == 1:
                ((name, f),) = item.items()
                if type(f) is dict and "A" <= name[0] <= "Z":
                    if name in _SIMPLE_NODES:
                        continue
                    if name == "FuncCall":
                        self._function(f)
                    elif name == "RangeVar":
                        self._relation(f)
                    elif name in _DML_NODES:
                        if executing:
                            facts.subjects.append(self.dml_subject(statement_kind(name, f), f))
                    elif name == "CommonTableExpr":
                        self.ctes.add(str(f.get("ctename", "")))
                    elif name == "ExecuteStmt":
                        if executing:
                            facts.executes.append(str(f.get("name", "")))
                    elif name == "VariableSetStmt":  # CREATE/ALTER FUNCTION ... SET x = y
                        facts.subjects.append(self._set_subject(f, statement_kind(name, f)))
                    elif name == "NotifyStmt":  # CREATE RULE ... DO ALSO NOTIFY x
                        self._notify(f, "notify")
                    push(reversed(f.values()))
                    continue
            if "relname" in item:  # a RangeVar in a field typed RangeVar*
                self._relation(item)
            push(reversed(item.values()))

    def _relation(self, f: Node) -> None:
        parts = [f.get("catalogname"), f.get("schemaname"), f.get("relname")]
        self.facts.tables[".".join(p for p in parts if p)] = None

    def _function(self, f: Node) -> None:
        names = [n["String"].get("sval", "") for n in f.get("funcname", []) if "String" in n]
        if not names:
            return
        self.facts.functions[".".join(names)] = None
        base = names[-1]
        if base == "set_config":
            self._set_config(f)
        elif base == "pg_notify":
            self._pg_notify(f)
        elif base in DYNAMIC_SQL_FUNCTIONS:
            self._dynamic_sql(f, base)
        elif base in WHOLE_RELATION_FUNCTIONS:
            self.add("dynamic_sql")

    def _set_config(self, f: Node) -> None:
        positional, named = _arguments(f)
        name_node = named.get("setting_name", positional[0] if positional else None)
        value_node = named.get("new_value", positional[1] if len(positional) > 1 else None)
        name = self._literal(name_node) if name_node is not None else UNKNOWN
        if not isinstance(name, str):
            tags = tags_for("set") | {"dynamic_setting"}
            self.facts.subjects.append(Subject("set", tags))
            return
        setting = name.strip().lower()
        tags = tags_for("set")
        timeout_ms: int | None = None
        if setting in LEXER_SETTINGS:
            value = self._literal(value_node) if value_node is not None else UNKNOWN
            if _unsafe_lexer_value(setting, value):
                tags = tags | {"unsafe_lexer_setting"}
        if setting in TIMEOUT_SETTINGS:
            timeout_ms = parse_ms(self._literal(value_node)) if value_node is not None else None
        self.facts.subjects.append(Subject("set", tags, setting=setting, timeout_ms=timeout_ms))

    def _pg_notify(self, f: Node) -> None:
        """pg_notify(channel, payload): the channel is a text value, used as is (no folding)."""
        positional, _ = _arguments(f)
        channel = self._literal(positional[0]) if positional else UNKNOWN
        self.add("notify", channel=channel if isinstance(channel, str) else None)

    def _notify(self, f: Node, kind: str) -> None:
        # NOTIFY name: an identifier, already folded by the parser as the server folds it.
        self.add(kind, channel=str(f.get("conditionname", "")))

    def _dynamic_sql(self, f: Node, base: str) -> None:
        positional, named = _arguments(f)
        tags = tags_for("dynamic_sql")
        at = len(self.facts.subjects)
        self.facts.subjects.append(Subject("dynamic_sql", tags))  # before what its SQL does
        where = _SQL_ARGUMENTS.get(base)
        if base == "ts_rewrite" and len(positional) + len(named) != 2:
            where = ()
        for index, node in enumerate(positional):
            if where is None or index in where:
                tags |= self._sql_argument(node)
        for node in named.values():
            tags |= self._sql_argument(node)
        self.facts.subjects[at] = Subject("dynamic_sql", tags)

    def _sql_argument(self, node: Any) -> frozenset[str]:
        """Read SQL given to a string-running function; its tags if it is not a literal."""
        value = self._literal(node)
        if value is UNKNOWN:
            return frozenset({"runtime_sql"})
        if isinstance(value, str) and value.strip():
            self._merge(self.ex.nested(value))
        return frozenset()

    # Literals -------------------------------------------------------------------------

    def _literal(self, node: Any) -> object:
        """The value of a literal-ish node (A_Const, bare String/Integer/Boolean, casts)."""
        if not isinstance(node, dict) or len(node) != 1:
            return UNKNOWN
        ((name, f),) = node.items()
        if name in ("String", "Integer", "Boolean", "Float"):
            self.ex.read_literal()
            key = {"String": "sval", "Integer": "ival", "Boolean": "boolval", "Float": "fval"}
            default = {"String": "", "Integer": 0, "Boolean": False, "Float": "0"}[name]
            return f.get(key[name], default)
        return self.ex.reader.value(node)

    def _literals(self, arg: Any) -> list[object]:
        if isinstance(arg, list):
            return [self._literal(item) for item in arg]
        if isinstance(arg, dict) and "List" in arg:
            return [self._literal(item) for item in arg["List"].get("items", [])]
        return [self._literal(arg)]

    def _copy_info(self, f: Node) -> CopyInfo:
        options: dict[str, object] = {}
        for option in f.get("options", []):
            d = option.get("DefElem", {})
            options[str(d.get("defname", ""))] = self._literal(d["arg"]) if "arg" in d else True
        query = deparse_copy_query(self.text()) if "query" in f else None
        return copy_info(f, options, query)


_SUMMARY_VERBS = {"insert": "INSERT INTO", "delete": "DELETE FROM", "select": "SELECT FROM"}


def _summary(statement: StatementFacts) -> str:
    """One statement a body runs, for people: ``UPDATE orders``, ``INSERT INTO audit``,
    ``SELECT f()`` (an expression calling functions). A bare expression (``x := 1``, ``IF
    found``) is not worth a line: empty."""
    tables = ", ".join(statement.tables)
    if statement.kind == "select" and not tables:
        calls = ", ".join(f"{name}()" for name in statement.functions)
        return f"SELECT {calls}" if calls else ""
    verb = _SUMMARY_VERBS.get(statement.kind) or statement.kind.replace("_", " ").upper()
    return f"{verb} {tables}".strip()


def _shortened(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unbounded(kind: str, f: Node) -> bool:
    """Whether the text leaves the number of rows a write changes open: every UPDATE,
    DELETE and MERGE; an INSERT unless it is VALUES (or DEFAULT VALUES) without ON CONFLICT
    DO UPDATE."""
    if kind != "insert":
        return True
    conflict = f.get("onConflictClause")
    if isinstance(conflict, dict) and conflict.get("action") == "ONCONFLICT_UPDATE":
        return True
    source = f.get("selectStmt")
    if source is None:
        return False  # DEFAULT VALUES
    select = source.get("SelectStmt", {}) if isinstance(source, dict) else {}
    return not (select.get("valuesLists") and "withClause" not in select)


def _safe_lineage(node: Node) -> Lineage | None:
    """`lineage`, failing closed: a tree it cannot read masks every derived-looking output."""
    try:
        return lineage(node)
    except Exception:  # noqa: BLE001 - a bug here must not fail classification open
        anything = ((None, frozenset({UNKNOWN_SOURCE})),)
        return Lineage(head=(), starred=True, loose=anything, named=anything)


def _safe_controls(node: Node, on_literal: Callable[[], None]) -> tuple[tuple[str, frozenset[str]], ...]:
    """`flow.controls`, failing closed: a statement it cannot follow depends on anything."""
    try:
        return controls(node, on_literal)
    except Exception:  # noqa: BLE001 - a bug here (or a tree too deep) must not fail open
        return (("a statement the gateway cannot follow", frozenset({UNKNOWN_SOURCE})),)


def _safe_stored(node: Node) -> tuple[tuple[str, frozenset[str]], ...]:
    """`flow.stored`, failing closed: a write it cannot read counts as storing anything."""
    try:
        return stored(node)
    except Exception:  # noqa: BLE001 - a bug here must not fail classification open
        return (("?", frozenset({UNKNOWN_SOURCE})),)


def _arguments(f: Node) -> tuple[list[Any], dict[str, Any]]:
    """A call's arguments: positional ones, and ``name => value`` ones by name."""
    positional: list[Any] = []
    named: dict[str, Any] = {}
    for arg in f.get("args", []):
        if isinstance(arg, dict) and "NamedArgExpr" in arg:
            n = arg["NamedArgExpr"]
            named[str(n.get("name", "")).lower()] = n.get("arg")
        else:
            positional.append(arg)
    return positional, named


def _is_settings_view(relation: Any) -> bool:
    """Is this RangeVar pg_catalog.pg_settings (as written: unqualified counts too)?"""
    if not isinstance(relation, dict):
        return False
    relation = relation.get("RangeVar", relation)
    return relation.get("relname") == SETTINGS_VIEW and relation.get("schemaname") in (None, "pg_catalog")


def _is_settings_view_name(name: str) -> bool:
    """A dotted name from `StatementFacts.tables`: pg_settings, pg_catalog.pg_settings."""
    parts = name.split(".")
    return parts[-1] == SETTINGS_VIEW and (len(parts) == 1 or parts[-2] == "pg_catalog")


_ENCODING_JUNK = re.compile(r"[^a-z0-9]")


def is_pinned_value(setting: str, value: object) -> bool:
    """Is `value` (a literal's value, or start-up text) the pinned value of a lexer setting,
    in a spelling PostgreSQL accepts for it? Settings outside `LEXER_SETTINGS`: True."""
    return not _unsafe_lexer_value(setting, value)


def _unsafe_lexer_value(setting: str, value: object) -> bool:
    """Would this value make the server read SQL differently from the gateway?

    Only the pinned value (`PINNED_LEXER_VALUES`) is safe, in any spelling PostgreSQL
    accepts for it. Anything that is not a literal (UNKNOWN), NULL included, is unsafe.
    """
    if setting == "standard_conforming_strings":
        if isinstance(value, bool):
            return not value
        if isinstance(value, int):
            return value == 0
        return not (isinstance(value, str) and parse_bool(value) is True)
    if setting == "client_encoding":
        # The proxy decodes UTF-8; PostgreSQL ignores case and punctuation in the name
        # (clean_encoding_name), and knows UTF8 as "utf8" and "unicode".
        if not isinstance(value, str):
            return True
        return _ENCODING_JUNK.sub("", value.lower()) not in ("utf8", "unicode")
    if setting == "backslash_quote":
        # safe_encoding refuses \' only in client-only encodings (SJIS, BIG5, GBK, ...): the
        # gateway's parser reads it so, and it is the one value that stays safe should the
        # encoding ever change. "on" accepts \' whatever the encoding (CVE-2006-2314);
        # "off" refuses statements the gateway read as valid.
        return not (isinstance(value, str) and value.strip().lower() == "safe_encoding")
    return False


_RELATION_OBJECTS = frozenset(
    {
        "OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW", "OBJECT_INDEX", "OBJECT_SEQUENCE",
        "OBJECT_FOREIGN_TABLE",
    }
)  # fmt: skip
# Leaves: nothing below them can call a function or name a table.
_SIMPLE_NODES = frozenset({"A_Const", "String", "Integer", "Float", "Boolean", "A_Star"})
_DML_NODES = frozenset({"InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})

_TOP_HANDLERS = {
    "InsertStmt": _Statement._dml,
    "UpdateStmt": _Statement._dml,
    "DeleteStmt": _Statement._dml,
    "MergeStmt": _Statement._dml,
    "ExplainStmt": _Statement._explain,
    "PrepareStmt": _Statement._prepare,
    "ExecuteStmt": _Statement._execute,
    "DeallocateStmt": _Statement._deallocate,
    "DiscardStmt": _Statement._discard,
    "CopyStmt": _Statement._copy,
    "VariableSetStmt": _Statement._set,
    "ViewStmt": _Statement._view,
    "AlterDatabaseSetStmt": _Statement._alter_with_set,
    "AlterRoleSetStmt": _Statement._alter_with_set,
    "AlterSystemStmt": _Statement._alter_with_set,
    "CreateFunctionStmt": _Statement._create_function,
    "DoStmt": _Statement._do,
    "NotifyStmt": _Statement._notify,
    "CallStmt": _Statement._call,
    "DropStmt": _Statement._drop,
}
