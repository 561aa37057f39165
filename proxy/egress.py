"""Egress limits: how many result rows and bytes one statement, and one session, may return.

Configured per resource (`resources.<name>.egress`) and enforced by `proxy.machine` for every
wire client, whatever protocol it speaks. Bytes are the sizes of the DataRow messages the
upstream sent (and of COPY TO's CopyData messages, a row each); rows and bytes of a session
add up across its statements. Each Execute counts as a statement, so a cursor fetched in
batches is bounded by the session limits.

When a limit would be exceeded the machine stops relaying that statement's rows (the rest are
read from the upstream and dropped), answers the client with `error_response` below in place
of the statement's completion, then the usual ReadyForQuery: the connection stays usable. The
statement's record carries SQLSTATE 54000 and `jitgate_egress_limit_total` counts the cut.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from proxy.protocol import messages as m
from proxy.records import EXECUTE, QUERY, SYNC, Entry

SQLSTATE = "54000"  # program_limit_exceeded
UNLIMITED = 1 << 62

_UNITS = {
    "max_rows_per_statement": "rows per statement",
    "max_bytes_per_statement": "bytes per statement",
    "max_rows_per_session": "rows per session",
    "max_bytes_per_session": "bytes per session",
}


@dataclass(frozen=True, slots=True)
class EgressLimits:
    """Caps on returned rows/bytes; UNLIMITED where not configured."""

    max_rows_per_statement: int = UNLIMITED
    max_bytes_per_statement: int = UNLIMITED
    max_rows_per_session: int = UNLIMITED
    max_bytes_per_session: int = UNLIMITED

    @classmethod
    def of(cls, **limits: int | None) -> EgressLimits | None:
        """Limits from optional values; None when none is set (nothing to enforce)."""
        given = {k: v for k, v in limits.items() if v is not None}
        return cls(**given) if given else None

    def value(self, limit: str) -> int:
        return int(getattr(self, limit))


def error_response(limits: EgressLimits, limit: str, resource: str | None = None) -> bytes:
    """The ErrorResponse a client gets for a statement cut at `limit`."""
    where = f" on resource {resource!r}" if resource else ""
    session = limit.endswith("_session")
    hint = (
        "This session has used its result budget; open a new session (a new grant) for more."
        if session
        else "Narrow the query: select fewer columns, add a WHERE clause or a LIMIT, or aggregate."
    )
    return m.error_response(
        SQLSTATE,
        f"jitgate: result exceeds the egress limit of {limits.value(limit)} {_UNITS[limit]}{where}",
        detail=f"limit {limit}; the rows before the limit were returned, the rest were dropped",
        hint=hint,
    )


class EgressCuts:
    """Mixed into `proxy.machine.SessionMachine`; the attributes below are the machine's."""

    _inflight: deque[Entry]
    _discarding: bool
    _egress: EgressLimits | None
    _on_egress_limit: Callable[[str], None] | None
    _resource: str | None
    _session_rows: int
    _session_bytes: int

    # Provided by SessionMachine.
    def _on_server_message(self, kind: int, buf: bytearray, pos: int, end: int, head: Entry | None) -> bytes | None:
        raise NotImplementedError

    def _complete(self, entry: Entry) -> None:
        raise NotImplementedError

    def _egress_drop(self, head: Entry, limits: EgressLimits, size: int) -> bool:
        """Count one DataRow of `size` bytes against the limits; True: drop it."""
        if head.cut is not None or head.muted:
            return True
        if head.swallow or head.explain is not None or head.function_oid is not None:
            return False  # the gateway's own side queries are not the client's egress
        rows = head.rows + 1
        nbytes = head.bytes + size
        if rows > limits.max_rows_per_statement:
            limit = "max_rows_per_statement"
        elif nbytes > limits.max_bytes_per_statement:
            limit = "max_bytes_per_statement"
        elif self._session_rows + 1 > limits.max_rows_per_session:
            limit = "max_rows_per_session"
        elif self._session_bytes + size > limits.max_bytes_per_session:
            limit = "max_bytes_per_session"
        else:
            head.bytes = nbytes
            self._session_rows += 1
            self._session_bytes += size
            return False
        head.cut = limit
        head.error = SQLSTATE
        head.plan = None
        if self._on_egress_limit is not None:
            self._on_egress_limit(limit)
        return True

    def _egress_copy(self, head: Entry, limits: EgressLimits, size: int) -> bool:
        """A CopyData of COPY TO (one row each, as Postgres sends them): counted like a DataRow."""
        if self._egress_drop(head, limits, size):
            return True
        head.rows += 1  # until CommandComplete's `COPY n` says
        return False

    def _on_cut(self, kind: int, buf: bytearray, pos: int, end: int, head: Entry) -> bytes | None:
        """A backend message for a statement cut by an egress limit.

        Its end (CommandComplete, ErrorResponse, PortalSuspended) becomes the egress error;
        everything else of it is dropped. An Execute's batch is then over for the client, as
        after any error: the answers to what follows it up to Sync are not relayed, and what
        the client sends before its Sync is not forwarded.
        """
        if kind in (0x53, 0x4E, 0x41):  # ParameterStatus, Notice, Notification
            return self._on_server_message(kind, buf, pos, end, head)
        if kind not in (0x43, 0x45, 0x49, 0x73) or head.cut_sent:
            return b""
        head.cut_sent = True
        error = error_response(self._egress or EgressLimits(), head.cut or "", self._resource)
        if head.kind != EXECUTE:
            return error  # a simple Query: its ReadyForQuery completes the record
        inflight = self._inflight
        inflight.popleft()
        self._complete(head)
        if kind == 0x45:  # the upstream itself now skips to Sync
            while inflight and inflight[0].kind != SYNC:
                inflight.popleft()
        else:
            for entry in inflight:
                if entry.kind in (SYNC, QUERY):
                    break
                entry.muted = True
        if not any(entry.kind == SYNC for entry in inflight):
            self._discarding = True
        return error
