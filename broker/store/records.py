"""Plain values that cross the store's boundary (never ORM objects, never secrets)."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Final, TypeAlias


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly minted gateway token. `token` is the only copy of the plaintext: show it once."""

    token_id: str
    token: str = field(repr=False)
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified gateway token allows: who, on which resource, as which role, until when."""

    token_id: str | None
    principal: str
    groups: tuple[str, ...]
    resource: str
    role: str
    expires_at: datetime
    reusable: bool
    owner: str | None = None  # for an agent: the person it acts for


@dataclass(slots=True)
class StatementRecord:
    """One statement as the proxy saw it; handed to `Recorder.record_statement`.

    `seq` numbers statements within a session from 1; `(session_id, seq)` is unique, which
    makes a retried batch idempotent. `decision`/`shadow_decision` take the policy's
    `Decision` or its string value. `duration_ms` and `rows` are None when unknown (blocked,
    parked, or failed before completion); `error_sqlstate` is the SQLSTATE the client got,
    from the upstream or from the gateway itself (`42501` for a block). `approval_id` names
    the approval a reviewed statement ran under, or was refused by (denied, expired, still
    pending).
    """

    session_id: str
    seq: int
    sql: str
    decision: str
    started_at: datetime
    fingerprint: str | None = None
    rule: str | None = None
    reason: str | None = None
    shadow_decision: str | None = None
    duration_ms: float | None = None
    rows: int | None = None
    masked_values: int = 0
    error_sqlstate: str | None = None
    # Result sets as the client saw them, when the resource records results (see proxy.results).
    results: list[dict[str, Any]] | None = None
    approval_id: str | None = None


# A statement as the proxy hands it to `Recorder.record_row`: a `StatementRecord`'s fields in
# their order, except `started_at`, given as seconds since the epoch (UTC). The relay builds
# one per statement on its event loop: the tuple costs ~0.3 µs where the dataclass with an
# aware datetime cost ~1.5 µs, and a batch of them pickles for the writer process at a sixth
# of the cost (a datetime pickles by reduction, each on its own). `statement_record` turns
# one into the record, in whichever process writes it.
StatementRow: TypeAlias = tuple[
    str, int, str, str, float, str | None, str | None, str | None, str | None, float | None, int | None, int,
    str | None, list[dict[str, Any]] | None, str | None,
]
# Positions in a row, literals so that mypy knows each one's type (tests/broker/store holds
# them to the dataclass's fields): the one a row holds differently, and what the recorder counts.
ROW_STARTED_AT: Final = 4
ROW_DECISION: Final = 3
ROW_DURATION_MS: Final = 9
ROW_MASKED_VALUES: Final = 11


# A record's fields as a tuple, in declaration order (what its constructor takes): the form
# a batch for the writer process pickles cheaply (`started_at` stays a datetime).
record_fields: Final = operator.attrgetter(*(f.name for f in fields(StatementRecord)))


def statement_record(item: StatementRecord | tuple[Any, ...]) -> StatementRecord:
    """The `StatementRecord` for a record, a `StatementRow`, or a record's fields as a tuple
    (`started_at` as a datetime): the forms a batch for the store can hold."""
    if isinstance(item, StatementRecord):
        return item
    started = item[ROW_STARTED_AT]
    if not isinstance(started, datetime):
        started = datetime.fromtimestamp(started, UTC)
    fields: tuple[Any, ...] = (*item[:ROW_STARTED_AT], started, *item[ROW_STARTED_AT + 1 :])
    return StatementRecord(*fields)


@dataclass(frozen=True, slots=True)
class SessionStart:
    """One session start, as `SessionRepository.start_sessions` records it."""

    grant: Grant
    client_addr: str | None = None
    application_name: str | None = None
    intent: str | None = None


@dataclass(frozen=True, slots=True)
class SessionEnd:
    """One session end, as `SessionRepository.end_sessions` records it."""

    session_id: str
    reason: str
    stats: SessionStats | None = None


@dataclass(frozen=True, slots=True)
class SessionStats:
    """Totals the proxy reports when a session ends."""

    statements: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as shown, checked against its chained `session.start` and `session.end`
    records (`broker.audit.coverage`): `tampered` names what does not match (a field name,
    `row_deleted`: shown from the chain, `no_audit_record`: a row the chain never had,
    `audit_record_altered`); `audit_seq` is the `session.start` record it was checked
    against, None when that record was pruned (archived) and the session is not checked."""

    id: str
    token_id: str | None
    principal: str
    groups: tuple[str, ...]
    resource: str
    role: str
    client_addr: str | None
    application_name: str | None
    intent: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    statements: int
    bytes_in: int
    bytes_out: int
    tampered: tuple[str, ...] = ()
    audit_seq: int | None = None

    @property
    def active(self) -> bool:
        return self.ended_at is None


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """A statement as shown (replay, `sessions show`, the API, the console), checked against
    its chained audit record (`broker.audit.coverage`): `verified` when the row matches the
    record and the record its own hash; else `tampered` names what does not match (a field
    name, `row_deleted`: shown from the record, `no_audit_record`: a row the chain never
    had, `audit_record_altered`). Neither, for a statement whose record was pruned
    (`audit_seq` None): it could not be checked."""

    seq: int
    sql: str
    fingerprint: str | None
    decision: str
    rule: str | None
    reason: str | None
    shadow_decision: str | None
    started_at: datetime
    duration_ms: float | None
    rows: int | None
    masked_values: int
    error_sqlstate: str | None
    results: list[dict[str, Any]] | None = None
    approval_id: str | None = None
    verified: bool = False
    tampered: tuple[str, ...] = ()
    audit_seq: int | None = None  # the chained record it was checked against


@dataclass(frozen=True, slots=True)
class SessionDetail:
    session: SessionInfo
    statements: tuple[StatementInfo, ...]

    @property
    def tampered(self) -> list[StatementInfo]:
        """The statements whose shown content does not match the audit chain."""
        return [s for s in self.statements if s.tampered]

    @property
    def verified(self) -> bool:
        """Nothing shown (the session's fields, its statements) contradicts the audit chain;
        true also for what could not be checked (pruned)."""
        return not self.session.tampered and not any(s.tampered for s in self.statements)


@dataclass(frozen=True, slots=True)
class SessionSweep:
    """`SessionRepository.sweep_sessions`: sessions and their chained records, both ways.

    `checked`: `session.start` records compared with their rows; `rows`: rows looked up in
    the chain (0 when only a seq range was read: then a row without a record is not looked
    for). `problems` holds the first of `count` findings, each "session ID: what" (the
    names of `SessionInfo.tampered`)."""

    checked: int
    rows: int
    count: int
    problems: list[str]
    whole: bool

    @property
    def ok(self) -> bool:
        return self.count == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "checked": self.checked, "rows": self.rows, "count": self.count,
            "problems": list(self.problems), "whole": self.whole,
        }
