"""RowPlan: what to do with each column of a result, decided once per RowDescription.

Every column gets one of these treatments (a function from the value the server sent to
the value the client gets; it returns its argument itself when it changes nothing and None
for SQL NULL):

column                                   | text format              | binary format
-----------------------------------------|--------------------------|-------------------------
matched by name, text-like               | shape (`shapes`)         | shape
derived from a masked column, text-like  | ``********``, always     | same
matched by name, json / jsonb            | JSON string of the shape | same (jsonb: 0x01 + it)
matched by name, anything else           | NULL                     | NULL
derived from a masked column, json      | JSON ``"********"``, always | same (jsonb: 0x01 + it)
derived from a masked column, other      | NULL                     | NULL
deterministic, text-like / json          | ``pseu_...`` pseudonym   | same
deterministic, anything else             | NULL                     | NULL
not matched, numbers/dates/uuid/...      | untouched, never scanned | untouched
not matched, text-like                   | detected spans masked    | same (raw UTF-8)
not matched, json / jsonb                | spans masked, JSON kept  | same; invalid -> string
not matched, other (citext, arrays, ...) | spans masked             | NULL if anything found
not matched, bytea                       | hex decoded, NULL if hit | NULL if anything found

"Always": a derived value is replaced whatever it is, NULL and the empty string included, so
that whether it is NULL or empty tells nothing either (``nullif(substr(ssn, 1, 1), '6')`` is
NULL exactly for the SSNs that start with 6). A value matched by name keeps its NULL and its
emptiness, as ``IS NULL`` and ``= ''`` (safe forms) would tell them anyway.

"Anything else" becomes NULL because a driver decodes NULL for every type, while stars in
an int8 or a binary array would break the whole row. Binary values of types whose layout
the masker does not parse (arrays, records, extension types) are scanned as raw bytes and
dropped whole on a hit, since a span cannot be replaced without rewriting their lengths.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence

from broker.masking import shapes
from broker.masking.config import ColumnRule, NameRules
from broker.masking.exceptions import MaskingRefused
from broker.masking.scanner import Scanner
from broker.masking.types import BINARY_FORMAT, JSONB_OID, ColumnInfo, Family, family_of

ValueFn = Callable[[bytes], "bytes | None"]
_SEP = b"\x00"  # never in a text value, and not a run character: joins do not merge runs
_JSONB_VERSION = b"\x01"


def _null(_: bytes) -> None:
    return None


def _whole_text(shape: shapes.Shape) -> ValueFn:
    def fn(v: bytes) -> bytes:
        return shapes.mask_whole(v, shape)

    return fn


def _whole_json(shape: shapes.Shape) -> ValueFn:
    def fn(v: bytes) -> bytes:
        inner = shapes.json_inner_string(v)
        masked = shapes.REDACTED if inner is None else shapes.mask_whole(inner, shape)
        return shapes.json_string(masked)

    return fn


_WHOLE_TEXT = {shape: _whole_text(shape) for shape in shapes.Shape}

#: The `rewrite` byte of a column masked by each of these functions: one that C applies itself
#: (proxy/protocol/_rowrun.c, "Whole values masked by name"), computing what the function
#: does; 1, "call it", for any other. tests/proxy/test_rowshapes.py holds the two together.
REWRITE_CODES: dict[ValueFn, int] = {
    _WHOLE_TEXT[shapes.Shape.REDACT]: 2,
    _WHOLE_TEXT[shapes.Shape.EMAIL]: 3,
    _WHOLE_TEXT[shapes.Shape.PHONE]: 4,
    _WHOLE_TEXT[shapes.Shape.CARD]: 5,
    _WHOLE_TEXT[shapes.Shape.AUTO]: 6,
    _null: 7,
}


def _pseudonym_text(key: bytes) -> ValueFn:
    def fn(v: bytes) -> bytes:
        return shapes.pseudonym(key, v)

    return fn


def _pseudonym_json(key: bytes) -> ValueFn:
    def fn(v: bytes) -> bytes:
        # A JSON string is hashed by its content, so it joins with the same text elsewhere.
        inner = shapes.json_inner_string(v)
        return shapes.json_string(shapes.pseudonym(key, v if inner is None else inner))

    return fn


def _jsonb_binary(inner: ValueFn) -> ValueFn:
    """Wrap a json text treatment for jsonb in binary format (a version byte, then text)."""

    def fn(v: bytes) -> bytes | None:
        if v[:1] != _JSONB_VERSION:
            return None  # a jsonb format this masker does not know: drop it, fail closed
        text = v[1:]
        out = inner(text)
        if out is text:
            return v
        return None if out is None else _JSONB_VERSION + out

    return fn


def _scan_text(scanner: Scanner) -> ValueFn:
    def fn(v: bytes) -> bytes:
        out = scanner.scan(v)
        return shapes.TOO_LARGE if out is None else out

    return fn


def _scan_json(scanner: Scanner) -> ValueFn:
    def fn(v: bytes) -> bytes:
        out = scanner.scan(v)
        if out is v:
            return v
        if out is None:
            return shapes.json_string(shapes.TOO_LARGE)
        try:
            json.loads(out)
        except ValueError:
            # A span that was a bare JSON number (a card stored as a number) turned to stars.
            return shapes.json_string(shapes.REDACTED)
        return out

    return fn


def _scan_or_null(scanner: Scanner) -> ValueFn:
    def fn(v: bytes) -> bytes | None:
        return v if scanner.scan(v) is v else None

    return fn


def _scan_opaque_text(scanner: Scanner) -> ValueFn:
    def fn(v: bytes) -> bytes | None:
        out = scanner.scan(v)
        return None if out is None else out  # too large to scan: NULL keeps arrays decodable

    return fn


def _scan_bytea_text(scanner: Scanner) -> ValueFn:
    def fn(v: bytes) -> bytes | None:
        if v[:2] == b"\\x":
            try:
                raw = bytes.fromhex(v[2:].decode("ascii"))
            except ValueError:
                return None
        else:
            raw = v  # bytea_output = escape: printable ASCII appears as itself
        return v if scanner.scan(raw) is raw else None

    return fn


class RowPlan:
    """Masks the values of one DataRow; built by `Masker.plan_rows`, stateless, shareable."""

    __slots__ = (
        "columns", "scanned", "rewrite", "rewrite_fns", "triggered",
        "_n", "_always", "_nulls", "_scan", "_scan_idx", "_scan_all",
    )

    def __init__(
        self,
        columns: Sequence[ColumnInfo],
        always: list[tuple[int, ValueFn]],
        scan: list[tuple[int, ValueFn]],
        scanner: Scanner,
        nulls: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        self.columns = tuple(columns)
        self._nulls = tuple(nulls)  # (index, what a NULL there becomes): derived values
        self._n = len(columns)
        self._always = tuple(always)
        self._scan = tuple(scan)
        self._scan_idx = tuple(i for i, _ in scan)
        self._scan_all = len(scan) == len(columns)
        #: The content gate: False only if no detector can match anywhere in its argument.
        self.triggered = scanner.triggered
        # For runs of rows at once (proxy.protocol.rowrun), when no NULL is filled in (derived
        # columns take the per-row path): one byte per column, 1 where the column is scanned
        # (`scanned`) or rewritten whatever it holds (`rewrite`, with `rewrite_fns` the
        # treatment per column, None elsewhere; a `rewrite` byte above 1 is one of
        # `REWRITE_CODES`). A run whose scanned values the gate stays
        # shut on changes only in its `rewrite` columns.
        self.scanned: bytes | None = None
        self.rewrite: bytes | None = None
        self.rewrite_fns: tuple[ValueFn | None, ...] = ()
        if not nulls:
            if scan:
                self.scanned = bytes(1 if i in self._scan_idx else 0 for i in range(self._n))
            if always:
                fns: list[ValueFn | None] = [None] * self._n
                for i, fn in always:
                    fns[i] = fn
                self.rewrite = bytes(0 if fn is None else REWRITE_CODES.get(fn, 1) for fn in fns)
                self.rewrite_fns = tuple(fns)

    def mask_values(self, values: list[bytes | None]) -> tuple[list[bytes | None] | None, int]:
        """(new values, number of values masked); (None, 0) when the row is unchanged."""
        if len(values) != self._n:
            raise MaskingRefused(
                f"a result row has {len(values)} values but its description {self._n} columns"
            )
        out: list[bytes | None] | None = None
        n = 0
        for i, fill in self._nulls:
            if values[i] is None:
                if out is None:
                    out = list(values)
                out[i] = fill
                n += 1
        for i, fn in self._always:
            v = values[i]
            if v is None:
                continue
            new = fn(v)
            if new is not v:
                if out is None:
                    out = list(values)
                out[i] = new
                n += 1
        if self._scan:
            if self._scan_all:
                try:
                    joined = _SEP.join(values)  # type: ignore[arg-type]
                except TypeError:  # a NULL among them
                    joined = _SEP.join([v for v in values if v is not None])
            else:
                joined = _SEP.join([v for i in self._scan_idx if (v := values[i]) is not None])
            if self.triggered(joined):
                for i, fn in self._scan:
                    v = values[i]
                    if v is None:
                        continue
                    new = fn(v)
                    if new is not v:
                        if out is None:
                            out = list(values)
                        out[i] = new
                        n += 1
        if out is None:
            return None, 0
        return out, n


def build_row_plan(
    columns: Sequence[ColumnInfo],
    *,
    rules: NameRules,
    scanner: Scanner,
    hmac_key: bytes | None,
    derived: Mapping[int, ColumnRule] | None = None,
) -> RowPlan | None:
    """The plan for `columns`, or None when no value of theirs can need masking.

    `derived` (from `derived.derived_rules`) marks fields computed from a sensitive column:
    MASK masks them whole with no shape (``********``), PSEUDONYM pseudonymises a field
    the name rules would leave alone.
    """
    always: list[tuple[int, ValueFn]] = []
    scan: list[tuple[int, ValueFn]] = []
    nulls: list[tuple[int, bytes]] = []
    for i, col in enumerate(columns):
        rule = rules.rule(col.name)
        shape = None
        marked = derived.get(i) if derived else None
        if marked is ColumnRule.MASK:
            redacted = _redacted(col)
            if redacted is not None:  # text or JSON: every value, NULL and '' included
                always.append((i, _constant(redacted)))
                nulls.append((i, redacted))
                continue
            rule, shape = marked, shapes.Shape.REDACT
        elif marked is ColumnRule.PSEUDONYM and rule is ColumnRule.KEEP:
            rule = marked
        fn, scanned = _treatment(col, rule, scanner, hmac_key, shape)
        if fn is not None:
            (scan if scanned else always).append((i, fn))
    if not always and not scan:
        return None
    return RowPlan(columns, always, scan, scanner, nulls)


def _redacted(col: ColumnInfo) -> bytes | None:
    """What every value of a derived text or JSON column becomes; None for other types
    (their values become NULL)."""
    family = family_of(col.type_oid)
    binary = col.format == BINARY_FORMAT
    if family is Family.TEXT or (family is Family.OPAQUE and not binary):
        return shapes.REDACTED
    if family is Family.JSON:
        text = shapes.json_string(shapes.REDACTED)
        return _JSONB_VERSION + text if binary and col.type_oid == JSONB_OID else text
    return None


def _constant(value: bytes) -> ValueFn:
    def fn(_: bytes) -> bytes:
        return value

    return fn


def _treatment(
    col: ColumnInfo,
    rule: ColumnRule,
    scanner: Scanner,
    hmac_key: bytes | None,
    shape: shapes.Shape | None = None,
) -> tuple[ValueFn | None, bool]:
    """(function, whether it goes behind the row-level scan gate) for one column."""
    family = family_of(col.type_oid)
    binary = col.format == BINARY_FORMAT
    jsonb_binary = binary and col.type_oid == JSONB_OID
    textual = family is Family.TEXT or (family is Family.OPAQUE and not binary)

    if rule is ColumnRule.PSEUDONYM and hmac_key is not None:
        if textual:
            return _pseudonym_text(hmac_key), False
        if family is Family.JSON:
            fn = _pseudonym_json(hmac_key)
            return (_jsonb_binary(fn) if jsonb_binary else fn), False
        return _null, False
    if rule is not ColumnRule.KEEP:
        if shape is None:
            shape = shapes.shape_for(col.name)
        if textual:
            return _WHOLE_TEXT[shape], False
        if family is Family.JSON:
            fn = _whole_json(shape)
            return (_jsonb_binary(fn) if jsonb_binary else fn), False
        return _null, False

    if not scanner.enabled or family is Family.NO_CONTENT:
        return None, False
    if family is Family.TEXT:
        return _scan_text(scanner), True
    if family is Family.JSON:
        fn = _scan_json(scanner)
        return (_jsonb_binary(fn) if jsonb_binary else fn), True
    if family is Family.BYTEA:
        # Text format is hex: the gate cannot see through it, so the column is always decoded.
        return (_scan_or_null(scanner), True) if binary else (_scan_bytea_text(scanner), False)
    # Arrays, records, enums, domains, extension types.
    return (_scan_or_null(scanner) if binary else _scan_opaque_text(scanner)), True
