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
    def plan_rows(self, columns: Any, lineage: Any = None) -> RowPlan | None: ...
    def plan_copy(self, columns: Any, copy_info: Any, lineage: Any = None) -> CopyPlan | None: ...
    def exposed(self, stored: Any) -> list[str]: ...  # proxy.masking_review
    def mask_message(self, fields: Any, statement: str = "") -> list[tuple[str, str]] | None: ...
    def mask_payload(self, text: str) -> str: ...


@dataclass(slots=True)
class Statement:
    """A prepared statement (protocol level) the proxy let through."""

    sql: str
    verdict: Verdict
    description: bytes | None = None  # RowDescription body, once the upstream described it
    # For a statement under review: executions already approved and not yet used. An
    # approval covers one execution, not every later Bind/Execute of the prepared statement.
    approved_runs: int = 0


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
    explain: list[bytes] | None = None  # this query is the gateway's own EXPLAIN of a parked statement
    awaiting_probe: bool = False  # a COPY whose columns the probe will tell
    probe_columns: list[m.FieldDescription] | None = None
    started: float = 0.0
    rows: int = 0
    masked: int = 0
    error: str | None = None
    bytes: int = 0  # DataRow bytes relayed, counted only under egress limits
    cut: str | None = None  # the egress limit that ended this statement's rows
    cut_sent: bool = False  # the client has had the egress error for it
    muted: bool = False  # after an egress cut in its batch: answers processed, not relayed
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
    estimate: int | None = None  # the planner's row estimate (EXPLAIN), for approvers


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


#: What an agent can do instead, by the part of the rule after the policy name ("server-
#: functions" in "agent-safe/server-functions"). Shown in the ErrorResponse's DETAIL.
INSTEAD: dict[str, str] = {
    "alter-system": "server settings are changed by an administrator, not through the gateway",
    "roles": "roles are managed by an administrator; ask for the role you need with an access request",
    "set-role": "you act as the role of your grant; to act as another, request access to that role",
    "dynamic-setting": "call set_config with a literal setting name, or use SET name = value",
    "lexer-setting": "keep standard_conforming_strings on and a UTF8 client encoding",
    "server-copy": "use COPY ... TO STDOUT or FROM STDIN (psql's \\copy) instead of a server file or program",
    "server-functions": "read the data with SELECT from tables and views; files and processes on the "
    "database host are out of reach",
    "extensions": "ask an administrator to install the extension",
    "load": "ask an administrator to install the library",
    "untrusted-language": "write the function in SQL or PL/pgSQL",
    "drop-database": "ask an administrator; a whole database is not dropped through the gateway",
    "foreign-servers": "connections to other servers are set up by an administrator",
    "tablespace": "tablespaces are set up by an administrator",
    "unparseable": "fix the SQL syntax; the gateway runs only statements it can parse",
    "copy-alone": "send the COPY as a query of its own",
    "unknown-prepared": "PREPARE the statement through the gateway in this session before EXECUTE",
    "copy-masking": "name the columns (COPY (SELECT a, b FROM t) TO STDOUT) so that they can be masked",
    "function-call": "call the function in a SELECT instead of the fast-path function call",
    "write-without-where": "add a WHERE clause naming the rows to change; a write with one runs at once",
    "dynamic-sql": "run the statement itself instead of building it in a string",
    "truncate": "DELETE ... WHERE for the rows you mean runs at once",
    "merge": "INSERT, or UPDATE/DELETE with a WHERE clause, run at once",
    "write": "reads (SELECT) run at once under this policy; writes wait for a reviewer",
    "stored-unmasked": "read the values with SELECT (they come back masked), or store them under the "
    "masked column's own name (create table t as select api_key from ...) where reads stay masked",
}

ACCESS_HINT = (
    "To get more access, ask for it with a reason: `jitgate connect <resource> --role <role> --reason "
    "\"...\"`, or the jitgate MCP tool request_access(resource, role, reason)."
)


def _instead(rule: str) -> str | None:
    return INSTEAD.get(rule.rpartition("/")[2])


def refusal_message(verdict: Verdict, *, denied_reason: str | None = None) -> bytes:
    """The gateway's ErrorResponse for a refused statement. MESSAGE names the rule and why;
    DETAIL the rule and what would be allowed instead; HINT how to go on (retry, re-run after
    an approval, or how to request access), so that an agent can act on it."""
    retry_hint = UNAVAILABLE_RULES.get(verdict.rule)
    if retry_hint is not None:
        text = f"jitgate: statement not run ({verdict.rule}): {verdict.reason}"
        return m.error_response("57P03", text, detail=f"rule: {verdict.rule}", hint=retry_hint)
    instead = _instead(verdict.rule)
    detail = f"rule: {verdict.rule}" + (f"; instead: {instead}" if instead else "")
    if verdict.decision is Decision.REVIEW:
        text = f"jitgate: statement requires approval ({verdict.rule}): {verdict.reason}"
        if denied_reason:
            text = f"jitgate: approval not granted ({verdict.rule}): {denied_reason}"
        hint = (
            "A reviewer must approve this statement; re-run the same statement in this session once it "
            "is approved (the MCP tool approval_status reports it)."
        )
    else:
        text = f"jitgate: statement blocked by policy rule {verdict.rule}: {verdict.reason}"
        hint = "This statement is not allowed through the gateway with your grant. " + ACCESS_HINT
    return m.error_response("42501", text, detail=detail, hint=hint)
