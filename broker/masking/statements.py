"""Does a statement read a masked column? (for errors and notices: `messages.withhold`)

A result row is masked by its columns' names and lineage, but an error or a notice may quote
any value the statement computed, in any words (``relation "<reverse(api_key)>" does not
exist``, ``unrecognized configuration parameter "..."``, a RAISE NOTICE in a function given
``ssn``). So when a statement reads a masked column, the text of every error and notice it
causes is withheld, whatever its SQLSTATE.

`reads_masked` answers from the statement's parse tree (pglast: libpg_query, the parser the
policy uses), without the catalog, failing closed. It is True when the statement

- names a column (or field, or anything else) the name rules mask or pseudonymise, anywhere:
  select list, WHERE, ``(c).ssn``, ``USING (ssn)``; or a string constant holds a word they
  mask (the SQL of a DO block or function body, ``query_to_xml('select ssn ...')``,
  ``format('...%s', ...)``);
- reads columns it does not name: ``*`` or ``t.*`` anywhere, ``TABLE t``, a whole-row
  reference (``c`` or ``row_to_json(c)`` for a FROM item, CTE or alias ``c``), a table whose
  columns an alias list renames (``customers c(a, b, x)``), a function that reads a relation
  or SQL named in a string (`broker.policy.facts.DYNAMIC_SQL_FUNCTIONS`,
  `WHOLE_RELATION_FUNCTIONS`);
- runs what it does not show: ``EXECUTE`` of a prepared statement, ``FETCH``/``MOVE`` of a
  cursor;
- cannot be read (does not parse, nests too deeply).

Not seen (no catalog): views and functions that read masked columns themselves, defined
outside the statement (``select leak()``). The content detectors still scan their messages.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pglast import parser as pg

from broker.masking.config import ColumnRule, NameRules
from broker.policy.facts import DYNAMIC_SQL_FUNCTIONS, WHOLE_RELATION_FUNCTIONS

_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_OPAQUE_STATEMENTS = frozenset({"ExecuteStmt", "FetchStmt"})
_READS_RELATION = DYNAMIC_SQL_FUNCTIONS | WHOLE_RELATION_FUNCTIONS
_MAX_SCAN = 1 << 20  # a statement longer than this is not parsed: it counts as reading anything


def reads_masked(statement: str, rules: NameRules) -> bool:
    """Might `statement` read a column the rules mask (see the module doc)? Never raises."""
    if len(statement) > _MAX_SCAN:
        return True
    try:
        tree = json.loads(pg.parse_sql_json(statement))
    except (pg.ParseError, RecursionError, ValueError):
        return True
    try:
        return _Reader(rules).reads(tree)
    except Exception:  # noqa: BLE001 - a tree this cannot read must not let a message through
        return True


class _Reader:
    def __init__(self, rules: NameRules) -> None:
        self._rules = rules
        self._masked: dict[str, bool] = {}
        self.relations: set[str] = set()  # FROM items, aliases, CTEs: whole-row candidates
        self.column_refs: list[list[str]] = []

    def reads(self, tree: Any) -> bool:
        if self._walk(tree):
            return True
        # A reference named like a FROM item, alias or CTE may be its whole row.
        return any(fields and fields[-1] in self.relations for fields in self.column_refs)

    def _walk(self, root: Any) -> bool:
        stack = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, list):
                stack.extend(item)
                continue
            if not isinstance(item, dict):
                continue
            for key, value in item.items():
                if key in _OPAQUE_STATEMENTS:
                    return True
                if key == "sval" and isinstance(value, str):
                    if self._names_masked(value):
                        return True
                    continue
                if key == "ColumnRef" and isinstance(value, dict):
                    if self._column_ref(value.get("fields", [])):
                        return True
                elif key == "FuncCall" and isinstance(value, dict):
                    names = [n.get("String", {}).get("sval", "") for n in value.get("funcname", [])]
                    if names and names[-1].lower() in _READS_RELATION:
                        return True
                elif key == "RangeVar" or (key == "relation" and isinstance(value, dict) and "relname" in value):
                    if self._range_var(value.get("RangeVar", value) if isinstance(value, dict) else {}):
                        return True
                elif key == "alias" and isinstance(value, dict):
                    self._add(value.get("aliasname"))
                elif key == "CommonTableExpr" and isinstance(value, dict):
                    self._add(value.get("ctename"))
                if isinstance(value, (dict, list)):
                    stack.append(value)
        return False

    def _column_ref(self, fields: list[Any]) -> bool:
        names: list[str] = []
        for f in fields:
            if not isinstance(f, dict) or "A_Star" in f:
                return True  # every column of something: masked ones too, as far as we know
            names.append(str(f.get("String", {}).get("sval", "")))
        self.column_refs.append(names)
        return False

    def _range_var(self, rv: dict[str, Any]) -> bool:
        self._add(rv.get("relname"))
        alias = rv.get("alias")
        if isinstance(alias, dict):
            self._add(alias.get("aliasname"))
            if alias.get("colnames"):
                return True  # customers c(a, b, x): a masked column under another name
        return False

    def _add(self, name: Any) -> None:
        if isinstance(name, str) and name:
            self.relations.add(name)

    def _names_masked(self, text: str) -> bool:
        """An identifier, or any word of a string constant, that the rules mask."""
        words = _WORD.findall(text)
        if len(text) <= 256 and (len(words) != 1 or words[0] != text):
            words.append(text)  # a quoted identifier as a whole ("card-number")
        for word in words:
            masked = self._masked.get(word)
            if masked is None:
                masked = self._masked[word] = self._rules.rule(word) is not ColumnRule.KEEP
            if masked:
                return True
        return False
