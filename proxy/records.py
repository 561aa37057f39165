"""What the relay machine keeps track of: in-flight entries, prepared statements, portals,
the events it reports, and the constants of its substitution scheme (see proxy.machine)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from broker.policy.model import Decision, Verdict
from proxy.protocol import messages as m

#: Client encodings whose multi-byte characters may contain ASCII bytes.
UNSAFE_ENCODINGS = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "GB18030", "JOHAB", "UHC"})

#: What the upstream receives instead of a refused statement: a guaranteed syntax error.
BLOCKED_TEXT = "JITGATE BLOCKED"
BLOCKED_STMT = "__jitgate_blocked"
PROBE_STMT = "__jitgate_probe"

#: Message types a client may send once the session is established.
FRONTEND_TYPES = frozenset(b"QPBDECSHFdcfX")

#: Backend message types that answer a frontend message (as opposed to asynchronous ones).
ANSWERS = frozenset(b"123ntTZCI")

# Entry kinds of the in-flight queue.
QUERY, PARSE, BIND, DESCRIBE_S, DESCRIBE_P, EXECUTE, CLOSE, SYNC, FUNCTION = range(9)


class Classifier(Protocol):
    def __call__(self, sql: str) -> Verdict: ...


class RowPlan(Protocol):
    def mask_values(self, values: list[bytes | None]) -> tuple[list[bytes | None] | None, int]: ...


class CopyPlan(Protocol):
    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]: ...


class MaskerLike(Protocol):
    def plan_rows(self, columns: Any) -> RowPlan | None: ...
    def plan_copy(self, columns: Any, copy_info: Any) -> CopyPlan | None: ...


@dataclass(slots=True)
class Statement:
    """A prepared statement (protocol level) the proxy let through."""

    sql: str
    verdict: Verdict
    description: bytes | None = None  # RowDescription body, once the upstream described it


@dataclass(slots=True)
class Portal:
    statement: Statement
    formats: tuple[int, ...]
    description: bytes | None = None


@dataclass(slots=True)
class Entry:
    kind: int
    sql: str = ""
    verdict: Verdict | None = None
    refusal: bytes | None = None  # our ErrorResponse replacing the upstream's
    swallow: bool = False  # internal message: answers are not relayed
    portal: Portal | None = None
    statement: Statement | None = None
    plan: Any = None
    copy_plan: Any = None
    copy_info: Any = None
    probe: bool = False  # this describe is the gateway's own COPY column probe
    function_oid: int | None = None  # this query is the gateway's own lookup of a function
    awaiting_probe: bool = False  # a COPY whose columns the probe will tell
    probe_columns: list[m.FieldDescription] | None = None
    started: float = 0.0
    rows: int = 0
    masked: int = 0
    error: str | None = None
    capture: Any = None  # proxy.results.ResultCapture when the resource records results


@dataclass(slots=True)
class StatementEvent:
    """What the recorder gets for every statement the session saw."""

    sql: str
    verdict: Verdict
    started: float
    duration: float
    rows: int | None
    masked: int
    error_sqlstate: str | None
    # Result sets as the client saw them (after masking), when the resource records results:
    # [{"columns": [...], "rows": [[str | None, ...]], "truncated": bool}]
    results: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Parked:
    """A statement under review: the client's bytes are held until a decision."""

    sql: str
    verdict: Verdict
    message: bytes
    kind: int


@dataclass(slots=True)
class Stats:
    statements: int = 0
    blocked: int = 0
    masked: int = 0
    bytes_from_client: int = 0
    bytes_to_client: int = 0


def column_info(fields: list[m.FieldDescription], formats: tuple[int, ...]) -> list[Any]:
    from broker.masking import ColumnInfo

    out = []
    for i, f in enumerate(fields):
        if not formats:
            fmt = 0
        elif len(formats) == 1:
            fmt = formats[0]
        else:
            fmt = formats[i] if i < len(formats) else 0
        out.append(ColumnInfo(f.name, f.type_oid, fmt))
    return out


#: Refusals that are not a policy decision but the gateway failing closed: they carry the
#: SQLSTATE of an unavailable server, so clients and operators retry instead of escalating.
UNAVAILABLE_RULES: dict[str, str] = {
    "gateway/recorder-unavailable": "the gateway is catching up on its session records; retry shortly",
}


def refusal_message(verdict: Verdict, *, denied_reason: str | None = None) -> bytes:
    retry_hint = UNAVAILABLE_RULES.get(verdict.rule)
    if retry_hint is not None:
        text = f"jitgate: statement not run ({verdict.rule}): {verdict.reason}"
        return m.error_response("57P03", text, detail=f"rule: {verdict.rule}", hint=retry_hint)
    if verdict.decision is Decision.REVIEW:
        text = f"jitgate: statement requires approval ({verdict.rule}): {verdict.reason}"
        if denied_reason:
            text = f"jitgate: approval not granted ({verdict.rule}): {denied_reason}"
        hint = "A reviewer must approve this statement; re-run it once approved."
    else:
        text = f"jitgate: statement blocked by policy rule {verdict.rule}: {verdict.reason}"
        hint = "This statement is not allowed through the gateway; ask a DBA if you need it."
    return m.error_response("42501", text, detail=f"rule: {verdict.rule}", hint=hint)
