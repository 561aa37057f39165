"""A batch of statements made into what the SQLite store writes for them, in one pass.

For each statement: its `statements` row (in `STATEMENT_COLUMNS` order, as SQLite holds it)
and its audit record's entry, whose `data` is written as canonical JSON directly
(`data_json`), byte for byte what `canonical_json(statement_data(...))` gives.

This runs in the recorder's writer process for every statement recorded, on the tuples the
proxy hands over (`StatementRow`, the start as epoch seconds) without building a
`StatementRecord` or the `data` dict first (that dict only when the appended records are
wanted: `keep`). It is compiled with mypyc (`proxy.native.MODULES`). A `StatementRecord`
given instead (tests, callers in this process) is taken as its fields.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from broker.audit.chain import canonical_value
from broker.audit.coverage import results_digest
from broker.store.audit import AuditEntry, timestamp_forms
from broker.store.base import enum_value
from broker.store.records import StatementRecord, record_fields

# principal, client_addr, intent, resource of a session: what its statements' records carry.
Owner = tuple["str | None", "str | None", "str | None", "str | None"]
NO_OWNER: Final[Owner] = (None, None, None, None)

STATEMENT_COLUMNS: Final = (
    "session_id", "seq", "sql", "fingerprint", "decision", "rule", "reason", "shadow_decision", "started_at",
    "duration_ms", "rows", "masked_values", "error_sqlstate", "results", "approval_id",
)

_json_str: Final = json.encoder.encode_basestring  # a str as JSON, as the canonical encoder writes it


def as_fields(item: StatementRecord | tuple[Any, ...]) -> tuple[Any, ...]:
    """A statement's fields as a tuple, in `StatementRecord` order (the start as epoch seconds
    or as an aware datetime)."""
    if isinstance(item, tuple):
        return item
    return record_fields(item)


# The text of a second, "YYYY-MM-DDTHH:MM:SS." and "YYYY-MM-DD HH:MM:SS.", by its fields: the
# statements of a batch fall in a few seconds, and `isoformat` costs ~1 µs. Bounded.
_SECONDS: Final[dict[tuple[int, int, int, int, int, int], tuple[str, str]]] = {}


def stamp(started: float | datetime) -> tuple[datetime, str, str]:
    """(the start as an aware datetime, `format_ts` of it, its SQLite text): what
    `timestamp_forms` gives, for a time seen once (a statement's start)."""
    when = started if isinstance(started, datetime) else datetime.fromtimestamp(started, UTC)
    if when.tzinfo is not UTC or when.year < 1000:
        text, db = timestamp_forms(when)
        return when, text, db
    key = (when.year, when.month, when.day, when.hour, when.minute, when.second)
    second = _SECONDS.get(key)
    if second is None:
        if len(_SECONDS) >= 1024:
            _SECONDS.clear()
        iso = when.replace(microsecond=0).isoformat()  # YYYY-MM-DDTHH:MM:SS+00:00
        second = _SECONDS[key] = (iso[:19] + ".", iso[:10] + " " + iso[11:19] + ".")
    micro = str(when.microsecond).zfill(6)
    return when, second[0] + micro + "Z", second[1] + micro


def _value(value: object) -> str:
    """`canonical_value(value)`, a string or None without a call."""
    if value is None:
        return "null"
    if type(value) is str:
        return _json_str(value)
    return canonical_value(value)


# The JSON around a statement's own values (`data_json`), for the values its session repeats.
Template = tuple[str, str, str, str, str]
Templates = dict[tuple[object, ...], Template]


def _template(
    client_addr: object, decision: object, fingerprint: object, intent: object, reason: object, resource: object,
    rule: object, shadow_decision: object, sql: object,
) -> Template:
    return (
        ',"client_addr":' + _value(client_addr) + ',"decision":' + _value(decision) + ',"duration_ms":',
        ',"fingerprint":' + _value(fingerprint) + ',"intent":' + _value(intent) + ',"masked_values":',
        ',"reason":' + _value(reason) + ',"resource":' + _value(resource) + ',"results_digest":',
        ',"rule":' + _value(rule) + ',"seq":',
        ',"shadow_decision":' + _value(shadow_decision) + ',"sql":' + _value(sql) + ',"started_at":',
    )


def _plain(*values: object) -> bool:
    """Each a str or None: values that are safe as one cache key (1, 1.0 and True are equal
    keys with different JSON texts)."""
    for value in values:
        if value is not None and type(value) is not str:
            return False
    return True


def data_json(
    templates: Templates, approval_id: object, client_addr: object, decision: object, duration_ms: object,
    error_sqlstate: object, fingerprint: object, intent: object, masked_values: object, reason: object,
    resource: object, results_digest: object, rows: object, rule: object, seq: object, shadow_decision: object,
    sql: object, started_at: object,
) -> str:
    """`canonical_json` of a statement record's `data` from its values, given in the data's
    (sorted) key order: paid for every statement recorded, so no generic walk. The text
    around the values a session repeats (SQL, fingerprint, rule, reason, client address...)
    is made once per batch (`templates`, a dict the caller keeps for the batch)."""
    if _plain(client_addr, decision, fingerprint, intent, reason, resource, rule, shadow_decision, sql):
        key = (client_addr, decision, fingerprint, intent, reason, resource, rule, shadow_decision, sql)
        around = templates.get(key)
        if around is None:
            around = templates[key] = _template(
                client_addr, decision, fingerprint, intent, reason, resource, rule, shadow_decision, sql
            )
    else:
        around = _template(client_addr, decision, fingerprint, intent, reason, resource, rule, shadow_decision, sql)
    by_addr, by_fingerprint, by_reason, by_rule, by_sql = around
    return "".join([
        '{"approval_id":', _value(approval_id), by_addr, _value(duration_ms), ',"error_sqlstate":',
        _value(error_sqlstate), by_fingerprint, _value(masked_values), by_reason, _value(results_digest),
        ',"rows":', _value(rows), by_rule, _value(seq), by_sql, _value(started_at), "}",
    ])


def _label(value: object) -> str:
    """A decision as stored: the string, or a str-mixin Enum's value."""
    return value if type(value) is str else enum_value(value)  # type: ignore[return-value]


class StatementBatch:
    """What `build` made of a batch: `rows` for the `statements` INSERT, `entries` for the
    audit chain, and for each its start (`times`) and that start's (`format_ts`, SQLite) text
    (`stamps`, so the chain does not format it again)."""

    def __init__(self) -> None:
        self.rows: list[tuple[Any, ...]] = []
        self.entries: list[AuditEntry] = []
        self.times: list[datetime] = []
        self.stamps: list[tuple[str, str]] = []


def build(items: Sequence[tuple[Any, ...]], owners: Mapping[str, Owner], keep: bool) -> StatementBatch:
    """The batch's rows and audit entries; `items` as `as_fields` gives them. With `keep`,
    each entry carries its `data` dict too (the appended records are wanted); otherwise an
    empty one (only the JSON is written)."""
    out = StatementBatch()
    templates: Templates = {}
    for item in items:
        (
            session_id, seq, sql, decision, started, fingerprint, rule, reason, shadow, duration_ms, rows,
            masked_values, error_sqlstate, results, approval_id,
        ) = item
        when, ts_text, ts_db = stamp(started)
        decision = _label(decision)
        if shadow is not None:
            shadow = _label(shadow)
        digest = None if results is None else results_digest(results)
        out.rows.append((
            session_id, seq, sql, fingerprint, decision, rule, reason, shadow, ts_db, duration_ms, rows,
            masked_values, error_sqlstate, None if results is None else json.dumps(results), approval_id,
        ))
        principal, client_addr, intent, resource = owners.get(session_id, NO_OWNER)
        text = data_json(
            templates, approval_id, client_addr, decision, duration_ms, error_sqlstate, fingerprint, intent,
            masked_values, reason, resource, digest, rows, rule, seq, shadow, sql, ts_text,
        )
        data: dict[str, Any] = {}
        if keep:
            data = {
                "approval_id": approval_id, "client_addr": client_addr, "decision": decision,
                "duration_ms": duration_ms, "error_sqlstate": error_sqlstate, "fingerprint": fingerprint,
                "intent": intent, "masked_values": masked_values, "reason": reason, "resource": resource,
                "results_digest": digest, "rows": rows, "rule": rule, "seq": seq, "shadow_decision": shadow,
                "sql": sql, "started_at": ts_text,
            }
        out.entries.append(("statement", principal, session_id, data, text))
        out.times.append(when)
        out.stamps.append((ts_text, ts_db))
    return out
