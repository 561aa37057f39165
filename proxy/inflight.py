"""What the relay has sent upstream and not yet seen answered: one entry per message that
gets an answer, in the order the server answers them.

Each kind of entry declares, phase by phase, which backend messages it accepts and the phase
each one leads to (`TRANSITIONS`); DONE means the entry is answered in full. A message that
the entry at the head of the queue does not accept means the gateway's model of the session
no longer matches the server's: the machine ends the session (`SessionDesync`) instead of
guessing. Asynchronous messages (NoticeResponse, NotificationResponse, ParameterStatus) are
accepted at any point and are not in the table.

The server's rules encoded here (PostgreSQL, src/backend/tcop/postgres.c):

- a simple Query answers with zero or more results (RowDescription + DataRows + CommandComplete,
  EmptyQueryResponse, COPY), at most one ErrorResponse (which ends the string), then
  ReadyForQuery;
- a FunctionCall answers like a Query: FunctionCallResponse or ErrorResponse, then its own
  ReadyForQuery; an error in it does not make the server skip anything;
- an error in an extended-protocol message (Parse, Bind, Describe, Execute, Close, Flush) makes
  the server skip *every* message up to the next Sync, simple Queries and FunctionCalls
  included (`discard_to_sync` in the machine);
- Sync answers ReadyForQuery, possibly after an ErrorResponse (a deferred constraint failing at
  the implicit COMMIT);
- Execute ends with CommandComplete, EmptyQueryResponse, PortalSuspended or ErrorResponse; it
  sends no RowDescription; COPY inside it behaves as in a Query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.policy.model import Verdict
from proxy.names import Portal, Statement, Version
from proxy.protocol import codes as c

# Entry kinds.
QUERY, PARSE, BIND, DESCRIBE_S, DESCRIBE_P, OWN_DESCRIBE_P, EXECUTE, CLOSE, SYNC, FUNCTION, REFUSED, REFUSED_QUERY = (
    range(12)
)
KIND_NAMES = (
    "Query", "Parse", "Bind", "Describe statement", "Describe portal", "the gateway's Describe portal",
    "Execute", "Close", "Sync", "FunctionCall", "a refused extended message", "a refused Query",
)
#: Kinds answered by extended-protocol rules: an error in one skips everything to Sync.
EXTENDED_KINDS = frozenset((PARSE, BIND, DESCRIBE_S, DESCRIBE_P, OWN_DESCRIBE_P, EXECUTE, CLOSE, REFUSED))

# Phases.
DONE = -1
START, ROWS, NO_ROWS, COPY_OUT, COPY_OUT_DONE, COPY_IN, ERRORED, VALUE, PARAMS = range(9)

_EXECUTE_END = {c.COMMAND_COMPLETE: DONE, c.EMPTY_QUERY: DONE, c.PORTAL_SUSPENDED: DONE, c.ERROR_RESPONSE: DONE}
_EXECUTE_COPY = {c.COPY_IN_RESPONSE: COPY_IN, c.COPY_OUT_RESPONSE: COPY_OUT}
_COPY_OUT = {c.BACKEND_COPY_DATA: COPY_OUT, c.BACKEND_COPY_DONE: COPY_OUT_DONE}

TRANSITIONS: tuple[dict[int, dict[int, int]], ...] = (
    # QUERY: results until ReadyForQuery.
    {
        START: {
            c.ROW_DESCRIPTION: ROWS, c.COMMAND_COMPLETE: START, c.EMPTY_QUERY: START,
            c.ERROR_RESPONSE: ERRORED, c.COPY_IN_RESPONSE: COPY_IN, c.COPY_OUT_RESPONSE: COPY_OUT,
            c.READY_FOR_QUERY: DONE,
        },
        ROWS: {c.DATA_ROW: ROWS, c.COMMAND_COMPLETE: START, c.ERROR_RESPONSE: ERRORED},
        COPY_OUT: {**_COPY_OUT, c.ERROR_RESPONSE: ERRORED},
        COPY_OUT_DONE: {c.COMMAND_COMPLETE: START, c.ERROR_RESPONSE: ERRORED},
        COPY_IN: {c.COMMAND_COMPLETE: START, c.ERROR_RESPONSE: ERRORED},
        ERRORED: {c.READY_FOR_QUERY: DONE},
    },
    # PARSE
    {START: {c.PARSE_COMPLETE: DONE, c.ERROR_RESPONSE: DONE}},
    # BIND
    {START: {c.BIND_COMPLETE: DONE, c.ERROR_RESPONSE: DONE}},
    # DESCRIBE_S: ParameterDescription, then RowDescription or NoData.
    {
        START: {c.PARAMETER_DESCRIPTION: PARAMS, c.ERROR_RESPONSE: DONE},
        PARAMS: {c.ROW_DESCRIPTION: DONE, c.NO_DATA: DONE},
    },
    # DESCRIBE_P
    {START: {c.ROW_DESCRIPTION: DONE, c.NO_DATA: DONE, c.ERROR_RESPONSE: DONE}},
    # OWN_DESCRIBE_P: the gateway's own, answered the same way, never relayed.
    {START: {c.ROW_DESCRIPTION: DONE, c.NO_DATA: DONE, c.ERROR_RESPONSE: DONE}},
    # EXECUTE: rows only once the gateway knows what they are (ROWS); NO_ROWS otherwise.
    {
        ROWS: {c.DATA_ROW: ROWS, **_EXECUTE_END, **_EXECUTE_COPY},
        NO_ROWS: {**_EXECUTE_END, **_EXECUTE_COPY},
        COPY_OUT: {**_COPY_OUT, c.ERROR_RESPONSE: DONE},
        COPY_OUT_DONE: {c.COMMAND_COMPLETE: DONE, c.ERROR_RESPONSE: DONE},
        COPY_IN: {c.COMMAND_COMPLETE: DONE, c.ERROR_RESPONSE: DONE},
    },
    # CLOSE
    {START: {c.CLOSE_COMPLETE: DONE, c.ERROR_RESPONSE: DONE}},
    # SYNC: an error here is the implicit COMMIT failing; ReadyForQuery follows.
    {START: {c.READY_FOR_QUERY: DONE, c.ERROR_RESPONSE: ERRORED}, ERRORED: {c.READY_FOR_QUERY: DONE}},
    # FUNCTION: like a Query with one result.
    {
        START: {c.FUNCTION_RESULT: VALUE, c.ERROR_RESPONSE: ERRORED},
        VALUE: {c.READY_FOR_QUERY: DONE},
        ERRORED: {c.READY_FOR_QUERY: DONE},
    },
    # REFUSED: the Parse of a guaranteed syntax error that replaced a refused message.
    {START: {c.ERROR_RESPONSE: DONE}},
    # REFUSED_QUERY: the Query of a guaranteed syntax error that replaced a refused one.
    {START: {c.ERROR_RESPONSE: ERRORED}, ERRORED: {c.READY_FOR_QUERY: DONE}},
)


@dataclass(slots=True, eq=False)
class Probe:
    """The gateway's own Parse/Describe/Close/Sync of a COPY's query, on the client's
    connection (only the session sees its temporary tables and search_path), sent when
    nothing of the client's is in flight and its input is held: the answers are never relayed."""

    columns: list[Any] | None = None  # the RowDescription's fields
    failed: bool = False
    done: bool = False


@dataclass(slots=True, eq=False)
class Entry:
    kind: int
    phase: int = START
    sql: str = ""
    verdict: Verdict | None = None
    refusal: bytes | None = None  # our ErrorResponse replacing the upstream's
    statement: Statement | None = None  # Parse, Describe statement: the version it is about
    portal: Portal | None = None  # Bind, Describe portal, Execute
    made: tuple[Version, ...] = ()  # versions of names this message or statement makes
    # Versions the gateway judged or masks it by: when its first answer comes, each must be
    # LIVE, or the server used something else (a definition that failed or is uncertain).
    uses: tuple[Version, ...] = ()
    sync_after_copy: Entry | None = None  # a Sync sent while `entry`'s COPY FROM may have run
    probe: Probe | None = None  # one of the gateway's own probe messages (never relayed)
    plan: Any = None  # masking (and recording) plan of the current result's rows
    copy_plan: Any = None
    copy_columns: Any = None  # a COPY TO's columns, when the gateway looked them up
    started: float = 0.0
    rows: int = 0
    masked: int = 0
    error: str | None = None
    bytes: int = 0  # DataRow bytes relayed, counted only under egress limits
    cut: str | None = None  # the egress limit that ended this statement's rows
    cut_sent: bool = False  # the client has had the egress error for it
    muted: bool = False  # after an egress cut in its batch: answers processed, not relayed
    capture: Any = None  # proxy.results.ResultCapture when the resource records results
    # One of the gateway's own messages around a rehearsed write (proxy.rehearsal): its
    # answers go to the rehearsal, never to the client; `own_step` says what it is for.
    own: Any = None
    own_step: int = 0
    # A client's Describe of a portal: the Execute of that portal sent after it in the same
    # batch, whose rows its RowDescription describes (no Describe of the gateway's own then).
    then: Entry | None = None

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]
