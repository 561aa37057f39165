"""What the relay machine reports and needs: the events it records, the ports it calls
(classifier, masker), a parked statement, and the refusals it answers with (see
proxy.machine; in-flight entries are proxy.inflight, names proxy.names)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pglast.parser import ParseError, get_postgresql_version, parse_sql_json

from broker.policy.model import Decision, Verdict
from proxy.protocol import messages as m

#: What the upstream receives instead of a refused statement: a guaranteed syntax error.
BLOCKED_TEXT = "JITGATE BLOCKED"
BLOCKED_STMT = "__jitgate_blocked"
#: The gateway's own prepared statement for describing a COPY's rows (proxy.requests._probe).
PROBE_STMT = "__jitgate_probe"


class Classifier(Protocol):
    def __call__(self, sql: str) -> Verdict: ...


class RowPlan(Protocol):
    # For runs of rows at once (proxy.protocol.rowrun; None: row by row): one byte per
    # column, 1 where it is scanned / masked whatever it holds (by `rewrite_fns`).
    scanned: bytes | None
    rewrite: bytes | None
    rewrite_fns: tuple[Callable[[bytes], bytes | None] | None, ...]

    def triggered(self, data: bytes) -> bool: ...
    def mask_values(self, values: list[bytes | None]) -> tuple[list[bytes | None] | None, int]: ...


class CopyPlan(Protocol):
    def mask_copy_data(self, data: bytes) -> tuple[bytes, int]: ...


class MaskerLike(Protocol):
    def plan_rows(self, columns: Any, lineage: Any = None) -> RowPlan | None: ...
    def plan_copy(self, columns: Any, copy_info: Any, lineage: Any = None) -> CopyPlan | None: ...
    def exposed(self, stored: Any) -> list[str]: ...  # proxy.decide.review_stored
    def inferred(self, controls: Any) -> list[tuple[str, str, Any]]: ...  # proxy.decide.review_inference
    def mask_message(self, fields: Any, statement: str = "") -> list[tuple[str, str]] | None: ...
    def mask_payload(self, text: str) -> str: ...


class StatementEvent:
    """What the recorder gets for every statement the session saw.

    A plain class, not a dataclass: one is made per statement, and compiled (mypyc) the
    dataclass kept its generated `__init__` interpreted, ~0.6 µs a statement; this one is
    compiled with the module.
    """

    sql: str
    verdict: Verdict
    started: float
    duration: float
    rows: int | None
    masked: int
    error_sqlstate: str | None
    # Result sets as the client saw them (after masking), when the resource records results:
    # [{"columns": [...], "rows": [[str | None, ...]], "truncated": bool}]
    results: list[dict[str, Any]] | None
    # The approval it ran under or was refused by (the verdict's, set when a review released it).
    approval_id: str | None

    def __init__(
        self,
        sql: str,
        verdict: Verdict,
        started: float,
        duration: float,
        rows: int | None,
        masked: int,
        error_sqlstate: str | None,
        results: list[dict[str, Any]] | None = None,
        approval_id: str | None = None,
    ) -> None:
        self.sql = sql
        self.verdict = verdict
        self.started = started
        self.duration = duration
        self.rows = rows
        self.masked = masked
        self.error_sqlstate = error_sqlstate
        self.results = results
        self.approval_id = approval_id

    def __repr__(self) -> str:
        return (
            f"StatementEvent(sql={self.sql!r}, verdict={self.verdict!r}, started={self.started!r}, "
            f"duration={self.duration!r}, rows={self.rows!r}, masked={self.masked!r}, "
            f"error_sqlstate={self.error_sqlstate!r}, results={self.results!r}, approval_id={self.approval_id!r})"
        )


@dataclass(slots=True)
class Parked:
    """A statement under review: the client's bytes are held until a decision."""

    sql: str
    verdict: Verdict
    message: bytes
    kind: int
    estimate: int | None = None  # the planner's row estimate (EXPLAIN), for approvers
    uses: tuple[Any, ...] = ()  # proxy.names versions its verdict was composed from
    # A write parked for its blast radius (proxy.rehearsal.BlastRadius): `message` holds the
    # client's messages to process again; `unit` when they run to a Sync (a Bind ... Sync).
    blast: Any = None
    unit: bool = False


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
    "lexer-setting": "keep standard_conforming_strings on, a UTF8 client encoding and backslash_quote safe_encoding",
    "server-copy": "use COPY ... TO STDOUT or FROM STDIN (psql's \\copy) instead of a server file or program",
    "server-functions": "read the data with SELECT from tables and views; files and processes on the "
    "database host are out of reach",
    "extensions": "ask an administrator to install the extension",
    "load": "ask an administrator to install the library",
    "untrusted-language": "write the function in SQL or PL/pgSQL",
    "runtime-sql": "send the statement itself, or EXECUTE a string literal, so that the gateway can check it",
    "unreadable-code": "fix the body's syntax (or that of the string it executes)",
    "drop-database": "ask an administrator; a whole database is not dropped through the gateway",
    "foreign-servers": "connections to other servers are set up by an administrator",
    "tablespace": "tablespaces are set up by an administrator",
    "notify-channel": "notify only on a channel the policy lists (notify_channels), named in the statement",
    "session-timeouts": "lower a timeout or RESET it; the gateway's value is the most a session may have",
    "prepare-transaction": "COMMIT the transaction; a prepared one outlives the session and holds its locks",
    "finish-prepared": "leave another session's prepared transaction to its owner or an administrator",
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


SYNTAX_HINT = "fix the SQL; the gateway only forwards statements it can parse"
_PARSER = "PostgreSQL {}.{}".format(*get_postgresql_version())


def syntax_error(sql: str) -> tuple[str, int | None] | None:
    """The parser's error for `sql` as PostgreSQL reports it: the message and the 1-based
    character position (the ErrorResponse's P field), or None when `sql` parses."""
    try:
        parse_sql_json(sql)
    except ParseError as exc:
        message = str(exc.args[0])
        index = exc.args[1] if len(exc.args) > 1 else None
        if isinstance(index, int):
            return message, index + 1
        # pglast drops a position past the last character: PostgreSQL's "at end of input".
        return message, len(sql) + 1 if message.endswith("at end of input") else None
    return None


def syntax_refusal(sql: str) -> bytes | None:
    """PostgreSQL's own answer to a statement its parser rejects (42601, message, position),
    given by the gateway, which never forwards what it cannot parse: the server might parse it
    differently (a newer version, other lexing) and run it. None when `sql` parses (an
    `unparseable` verdict for another reason, nesting too deep to check, is refused as such)."""
    found = syntax_error(sql)
    if found is None:
        return None
    message, position = found
    fields = [
        (m.F_SEVERITY, "ERROR"), (m.F_SEVERITY_NONLOCAL, "ERROR"), (m.F_SQLSTATE, "42601"), (m.F_MESSAGE, message),
        (m.F_DETAIL, f"jitgate: the gateway's parser ({_PARSER}'s) rejects the statement; nothing was run"),
        (m.F_HINT, SYNTAX_HINT),
    ]
    if position is not None:
        fields.append(("P", str(position)))
    return m.build_fields(b"E", fields)


def refusal_message(
    verdict: Verdict, *, denied_reason: str | None = None, hint: str | None = None, sql: str | None = None
) -> bytes:
    """The gateway's ErrorResponse for a refused statement. MESSAGE names the rule and why;
    DETAIL the rule and what would be allowed instead; HINT how to go on (retry, re-run after
    an approval, or how to request access), so that an agent can act on it.

    `denied_reason` and `hint` come from a review that ended without an approval (the hook
    says what is true: denied, expired, cancelled, still pending). A statement the parser
    rejects (`sql` given) gets PostgreSQL's own syntax error instead (`syntax_refusal`)."""
    if sql is not None and verdict.rule.endswith("/unparseable"):
        syntax = syntax_refusal(sql)
        if syntax is not None:
            return syntax
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
        # Without a hint from the review, no approval was asked for (a fast-path call).
        hint = hint or (
            "A reviewer must approve this statement: send it as a query, which the gateway parks until "
            "a reviewer decides (the MCP tool approval_status reports the request)."
        )
    else:
        text = f"jitgate: statement blocked by policy rule {verdict.rule}: {verdict.reason}"
        hint = "This statement is not allowed through the gateway with your grant. " + ACCESS_HINT
    return m.error_response("42501", text, detail=detail, hint=hint)
