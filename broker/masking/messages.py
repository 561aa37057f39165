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
