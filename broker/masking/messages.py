"""Values in server messages: what errors, notices and notifications quote of the data.

A result row is not the only way a value leaves the database. PostgreSQL quotes the value it
choked on (``select ssn::int`` answers ``invalid input syntax for type integer:
"637-16-6681"``), constraint violations show the row (``Failing row contains (1, ..., 637-16-
6681, sk_live_...)``) or the key (``Key (email)=(a@b.c) already exists``), JSON errors quote
the token and the line. Such a quote may be of anything the statement read, rewritten or not
(``reverse(api_key)::int``), so the content detectors alone cannot catch it.

`mask_fields` rewrites the fields of an ErrorResponse or NoticeResponse:

- for SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation), the data
  a message quotes is replaced by ``********``: quoted spans of the message and the detail
  (the identifiers of class 23 messages stay: their values are in the detail), a key's
  values, a failing row, the JSON line of the context. A quoted value that the statement
  itself spells out (the client's own literal) is kept, so ``'abc'::int`` still says what
  was wrong;
- every other text field (message, detail, hint, context) goes through the content detectors,
  as a text value would.

That covers statements that read no masked column. When the statement does
(`statements.reads_masked`: it names one, reads ``*`` or a whole row, runs a prepared
statement or cursor, or cannot be parsed), any quote may be of a value derived from it, in
any class (``relation "<reverse(api_key)>" does not exist`` is 42P01), so `withhold` keeps
only the SQLSTATE, severity, position and the server's source location, and the message
becomes ``<condition>: ********; details withheld ...``. The one exception
(`located_in_statement`): an error the server locates in the statement's text (a position
field) whose quotes are the text at that position (``column "nmae" does not exist``, a syntax
error): it comes from parse analysis, which reads no data, and goes through the rules above.

Notification payloads (`mask_text`) go through the content detectors.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from broker.masking.scanner import Scanner

MASK = "********"
_TEXT_FIELDS = frozenset("MDHWq")  # message, detail, hint, context, internal query
# From the first quote to the last: a value may hold quotes itself ("{"a": 1}"); masking
# a second quoted name along with it is the price of never showing part of a value.
_QUOTED = re.compile(r'"(.*)"', re.DOTALL)
_KEY_VALUES = re.compile(r"(\)=\()(.*)(\))")
_FAILING_ROW = re.compile(r"(Failing row contains \().*(\))", re.DOTALL)
_DATA_LINE = re.compile(r"((?:JSON|XML) data, line \d+: ).*")
_EACH_QUOTED = re.compile(r'"([^"]*)"')
# What a withheld message keeps: severity, SQLSTATE, position in the client's statement, and
# the server's source file, line and routine. Message, detail, hint, context, internal query
# and internal position go, and so do the schema/table/column/type/constraint names (RAISE ... USING
# COLUMN = <a value> puts anything there) and unknown fields.
_KEPT_FIELDS = frozenset("SVCPFLR")
WITHHELD = "details withheld because the statement reads masked columns (jitgate)"
# Class texts (PostgreSQL's errcodes.txt) and the condition names agents meet most often.
SQLSTATE_CLASSES = {
    "00": "successful completion", "01": "warning", "02": "no data",
    "03": "SQL statement not yet complete", "08": "connection exception",
    "09": "triggered action exception", "0A": "feature not supported",
    "0B": "invalid transaction initiation", "0F": "locator exception", "0L": "invalid grantor",
    "0P": "invalid role specification", "0Z": "diagnostics exception", "10": "XQuery error",
    "20": "case not found", "21": "cardinality violation", "22": "data exception",
    "23": "integrity constraint violation", "24": "invalid cursor state",
    "25": "invalid transaction state", "26": "invalid SQL statement name",
    "27": "triggered data change violation", "28": "invalid authorization specification",
    "2B": "dependent privilege descriptors still exist", "2D": "invalid transaction termination",
    "2F": "SQL routine exception", "34": "invalid cursor name", "38": "external routine exception",
    "39": "external routine invocation exception", "3B": "savepoint exception",
    "3D": "invalid catalog name", "3F": "invalid schema name", "40": "transaction rollback",
    "42": "syntax error or access rule violation", "44": "WITH CHECK OPTION violation",
    "53": "insufficient resources", "54": "program limit exceeded",
    "55": "object not in prerequisite state", "57": "operator intervention", "58": "system error",
    "F0": "configuration file error", "HV": "foreign data wrapper error", "P0": "PL/pgSQL error",
    "XX": "internal error",
}  # fmt: skip
SQLSTATE_CONDITIONS = {
    "0A000": "feature_not_supported", "21000": "cardinality_violation",
    "22001": "string_data_right_truncation", "22003": "numeric_value_out_of_range",
    "22004": "null_value_not_allowed", "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow", "22012": "division_by_zero",
    "22023": "invalid_parameter_value", "2201B": "invalid_regular_expression",
    "22P02": "invalid_text_representation", "23502": "not_null_violation",
    "23503": "foreign_key_violation", "23505": "unique_violation", "23514": "check_violation",
    "25P02": "in_failed_sql_transaction", "40001": "serialization_failure",
    "40P01": "deadlock_detected", "42501": "insufficient_privilege", "42601": "syntax_error",
    "42602": "invalid_name", "42702": "ambiguous_column", "42703": "undefined_column", "42704": "undefined_object",
    "42804": "datatype_mismatch", "42883": "undefined_function", "42P01": "undefined_table",
    "55P03": "lock_not_available", "57014": "query_canceled", "P0001": "raise_exception",
}  # fmt: skip


def mask_fields(
    fields: Sequence[tuple[str, str]], scanner: Scanner, statement: str = ""
) -> list[tuple[str, str]] | None:
    """The fields with quoted data masked, or None when nothing changed."""
    code = next((value for key, value in fields if key == "C"), "")
    data_class = code[:2] in ("22", "23")
    out: list[tuple[str, str]] = []
    changed = False
    for key, value in fields:
        new = value
        if key in _TEXT_FIELDS:
            if data_class:
                new = _mask_quoted_data(key, new, code, statement)
            new = mask_text(new, scanner)
        changed = changed or new != value
        out.append((key, new))
    return out if changed else None


def withhold(fields: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The fields of a message about a statement that reads masked columns: only what
    cannot quote a value stays, and the message says which condition it was."""
    named = dict(fields)
    code = named.get("C", "")
    severity = named.get("V") or named.get("S") or ""  # V is never translated
    if code in ("", "00000"):
        label = severity.lower() or "notice"
    else:
        label = SQLSTATE_CONDITIONS.get(code) or SQLSTATE_CLASSES.get(code[:2]) or "error"
    out: list[tuple[str, str]] = []
    for key, value in fields:
        if key == "M":
            out.append((key, f"{label}: {MASK}; {WITHHELD}"))
        elif key in _KEPT_FIELDS:
            out.append((key, value))
    if not any(key == "M" for key, _ in out):
        out.append(("M", f"{label}: {MASK}; {WITHHELD}"))
    return out


def located_in_statement(fields: Sequence[tuple[str, str]], statement: str) -> bool:
    """Does the server place this error in the statement's text (its position field), with
    every quote of the message being the text there? Then it is about what the client
    wrote (a misspelt name, a syntax error, its own literal), from parse analysis."""
    position = dict(fields).get("P", "")
    if not position.isdigit() or not 1 <= int(position) <= len(statement):
        return False
    at = statement[int(position) - 1 :]
    if at[:1] in ("'", '"'):
        at = at[1:]
    at = at.lower()
    named = dict(fields)
    message = named.get("M", "")
    if message.count('"') % 2:
        return False
    spans = _EACH_QUOTED.findall(message)
    if not spans:  # nothing quoted: only a name or type error of parse analysis (class 42)
        return named.get("C", "").startswith("42")
    return all(span and at.startswith(span.lower()) for span in spans)


def mask_text(text: str, scanner: Scanner) -> str:
    """`text` with what the content detectors find masked."""
    if not scanner.enabled:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    scanned = scanner.scan(raw)
    if scanned is None:  # too long to scan: could hold anything
        return MASK
    return text if scanned is raw else scanned.decode("utf-8", "replace")


def _mask_quoted_data(key: str, value: str, code: str, statement: str) -> str:
    def quoted(match: re.Match[str]) -> str:
        inner = match.group(1)
        return match.group(0) if inner and _spelled_out(inner, statement) else f'"{MASK}"'

    if key == "M":
        return value if code.startswith("23") else _QUOTED.sub(quoted, value)
    if key == "D":
        value = _FAILING_ROW.sub(rf"\g<1>{MASK}\g<2>", value)
        value = _KEY_VALUES.sub(rf"\g<1>{MASK}\g<3>", value)
        return _QUOTED.sub(quoted, value)
    if key == "W":
        return _DATA_LINE.sub(rf"\g<1>{MASK}", value)
    return value


def _spelled_out(value: str, statement: str) -> bool:
    """The client wrote this value itself (a literal of its statement): nothing leaks."""
    return len(value) < 256 and (f"'{value}'" in statement or f"'{value.replace(chr(39), chr(39) * 2)}'" in statement)
