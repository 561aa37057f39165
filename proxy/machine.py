"""The per-session relay state machine: policy on the way in, masking on the way out.

Sans-IO like the codec below it: ``feed_client`` and ``feed_server`` take bytes and leave
what must be written in ``out_upstream`` / ``out_client``; the asyncio layer
(``proxy.relay``) only moves bytes and runs the awaitable steps (approval waits).

How a refused statement is answered. Postgres semantics after an error are subtle: in a
transaction block the transaction becomes aborted (ReadyForQuery 'E'), in an implicit
extended-protocol transaction everything since the last Sync is rolled back and the
server skips messages until Sync. Rather than re-implementing that, the machine
*substitutes* the refused message with one that makes the upstream itself fail at that
point (a Parse or Query of a fixed text that is a syntax error), then replaces the
upstream's ErrorResponse for it with the gateway's own (42501, naming rule and reason).
The upstream never sees the refused text, and the transaction state the client is told
is the one the upstream really has.

Responses are matched to requests with an in-flight queue of the frontend messages sent
upstream, in order, exactly like the server answers them. That is what lets the machine
know which RowDescription describes which DataRows (for masking), which ErrorResponse
belongs to a substituted message, and where a statement's record ends.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.masking import MaskingError
from broker.policy.lineage import UNKNOWN, merge
from broker.policy.model import Decision, Lineage, Verdict
from proxy.egress import EgressCuts, EgressLimits
from proxy.exceptions import ResultRefused
from proxy.masking_review import review_stored
from proxy.protocol import messages as m
from proxy.protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, ProtocolViolation
from proxy.records import (
    ANSWERS,
    BIND,
    BLOCKED_STMT,
    BLOCKED_TEXT,
    CLOSE,
    DESCRIBE_P,
    DESCRIBE_S,
    EXECUTE,
    FRONTEND_TYPES,
    FUNCTION,
    PARSE,
    QUERY,
    SYNC,
    UNSAFE_ENCODINGS,
    Classifier,
    Entry,
    MaskerLike,
    Parked,
    Portal,
    Statement,
    StatementEvent,
    Stats,
    column_info,
    refusal_message,
)
from proxy.results import RecordingPlan, ResultCapture, ResultLimits
from proxy.side_queries import SideQueries

_U32 = struct.Struct("!I")
_PASS_MUTED = frozenset(b"ZSNA")  # ReadyForQuery and asynchronous messages


#: The lineage of rows whose source the gateway cannot know: every field counts as derived
#: from an unnamed (so masked) column.
_ANYTHING = ((None, frozenset({UNKNOWN})),)
ANY_SOURCE = Lineage(head=(), starred=True, loose=_ANYTHING, named=_ANYTHING)


def _rows_of(verdict: Verdict, own: Lineage | None, named: list[Lineage | None], count: int) -> Verdict:
    """EXECUTE p and FETCH c return the rows of what p prepared or c declared: mask them by
    that lineage. In a string of several statements, by every name any of them may give."""
    single = verdict.statement_count == 1 and count == 1
    return replace(verdict, lineage=named[0] if single else merge([own, *named]))


class SessionMachine(SideQueries, EgressCuts):
    """Pure relay logic for one client session (see the module docstring)."""

    def __init__(
        self,
        *,
        classify: Classifier,
        masker: MaskerLike | None,
        on_statement: Callable[[StatementEvent], None],
        client_user: str,
        upstream_user: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        record_results: ResultLimits | None = None,
        egress: EgressLimits | None = None,
        on_egress_limit: Callable[[str], None] | None = None,
        resource: str | None = None,
    ) -> None:
        self._classify = classify
        # Egress limits cost one `is not None` per DataRow when off (proxy.egress).
        self._init_egress(egress)
        self._on_egress_limit = on_egress_limit
        self._resource = resource
        # Result recording wraps the row plan (proxy.results), so off costs nothing per row.
        self._record = record_results
        self._masker = masker
        self._on_statement = on_statement
        self._client_user = client_user
        self._upstream_user = upstream_user
        self._max = max_message_bytes
        self._clock = clock
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self.out_upstream: list[bytes] = []
        self.out_client: list[bytes] = []
        self._inflight: deque[Entry] = deque()
        self._statements: dict[str, Statement] = {}
        self._portals: dict[str, Portal] = {}
        self._sql_prepared: dict[str, Verdict] = {}
        self._cursors: dict[str, Lineage | None] = {}  # SQL cursors: the lineage of their rows
        self._plans: dict[tuple[bytes, tuple[int, ...], Any], Any] = {}  # + the lineage
        self._open_extended = False  # extended messages sent since the last Sync
        self._discarding = False  # a refusal happened in this batch: drop until Sync
        self.parked: Parked | None = None
        self._held_call: bytes | None = None  # a FunctionCall waiting for its OID's name
        self._explaining: Parked | None = None  # parked, waiting for the EXPLAIN of its blast radius
        self._function_names: dict[int, tuple[str, str]] = {}
        self.terminated = False
        self.txn_status = b"I"
        self.stats = Stats()

    # ---------------------------------------------------------------- client -> upstream

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command outside a transaction: nothing in flight or
        parked, no extended-protocol batch left open, nothing of the client's unprocessed."""
        return (
            self.txn_status == b"I" and not self._inflight and self.parked is None
            and not self._open_extended and not self._cbuf
        )

    @property
    def buffered_client(self) -> int:
        """Bytes received from the client and not processed yet (e.g. while parked)."""
        return len(self._cbuf)

    def feed_client(self, data: bytes) -> None:
        self._cbuf += data
        self.stats.bytes_from_client += len(data)
        self._process_client()

    def _process_client(self) -> None:
        buf = self._cbuf
        n = len(buf)
        pos = 0
        run = 0  # start of a run of messages forwarded unchanged
        out = self.out_upstream
        unpack = _U32.unpack_from
        while n - pos >= 5 and self.parked is None and self._held_call is None:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > self._max:
                self._cbuf = bytearray()
                raise ProtocolViolation(
                    f"message of {length} bytes is invalid or exceeds the limit of {self._max} bytes",
                    sqlstate="54000" if length > self._max else "08P01",
                )
            kind = buf[pos]
            if kind not in FRONTEND_TYPES:
                # Checked before waiting for the body: a second StartupMessage (type byte 0)
                # would otherwise have the proxy wait for a length it made up.
                self._cbuf = bytearray()
                raise ProtocolViolation(f"unexpected frontend message type 0x{kind:02x}")
            end = pos + 1 + length
            if end > n:
                break
            if self._discarding and kind not in (0x53, 0x58):
                # After a refusal inside an extended-protocol batch the upstream ignores
                # everything up to Sync, as Postgres does; the gateway does not even send it.
                if run < pos:
                    out.append(bytes(buf[run:pos]))
                pos = run = end
                continue
            if kind in (0x64, 0x63, 0x66):  # CopyData, CopyDone, CopyFail: part of COPY FROM STDIN
                pos = end
                continue
            if kind in (0x53, 0x48):  # Sync, Flush
                if kind == 0x53:
                    self._inflight.append(Entry(SYNC))
                    self._open_extended = False
                    self._discarding = False
                pos = end
                continue
            body = bytes(buf[pos + 5 : end])
            # Only Query, Parse (which may be parked) and Execute ever need the whole message.
            raw = bytes(buf[pos:end]) if kind in (0x51, 0x50, 0x45, 0x46) else b""
            replacement = self._on_client_message(kind, body, raw)
            if replacement is not None:
                if run < pos:
                    out.append(bytes(buf[run:pos]))
                out.extend(replacement)
                run = end
            pos = end
        if run < pos:
            out.append(bytes(buf[run:pos]))
        del buf[:pos]

    def _on_client_message(self, kind: int, body: bytes, raw: bytes) -> list[bytes] | None:
        """Handle one frontend message; None forwards it unchanged, a list replaces it."""
        if kind == 0x51:  # Query
            return self._on_query(m.parse_query(body), raw)
        if kind == 0x50:  # Parse
            return self._on_parse(m.parse_parse(body), raw)
        self._open_extended = True
        if kind == 0x42:  # Bind
            return self._on_bind(m.parse_bind(body))
        if kind == 0x45:  # Execute
            return self._on_execute(m.parse_execute(body)[0], raw)
        if kind == 0x44:  # Describe
            what, name = m.parse_describe_or_close(body)
            entry = Entry(DESCRIBE_S if what == "S" else DESCRIBE_P)
            if what == "S":
                entry.statement = self._statements.get(name)
            else:
                entry.portal = self._portals.get(name)
            self._inflight.append(entry)
            return None
        if kind == 0x43:  # Close
            what, name = m.parse_describe_or_close(body)
            (self._statements if what == "S" else self._portals).pop(name, None)
            self._inflight.append(Entry(CLOSE))
            return None
        if kind == 0x58:  # Terminate
            self.terminated = True
            return None
        if kind == 0x46:  # FunctionCall
            return self._on_function_call(m.parse_function_call_oid(body), raw)
        raise ProtocolViolation(f"unexpected frontend message type {chr(kind)!r}")

    # -- policy ---------------------------------------------------------------------------

    def _decide(self, sql: str) -> Verdict:
        verdict = self._classify(sql)
        if verdict.executes and verdict.decision is not Decision.BLOCK:
            # A PREPARE earlier in the same string counts too ("PREPARE p AS ...; EXECUTE p").
            own = dict(verdict.prepares)
            outer, named = verdict.lineage, []
            for name in verdict.executes:
                inner = own.get(name) or self._sql_prepared.get(name)
                if inner is None:
                    return Verdict(
                        Decision.BLOCK,
                        "gateway/unknown-prepared",
                        f"EXECUTE of prepared statement {name!r} that the gateway did not see prepared",
                    )
                named.append(inner.lineage)
                if inner.decision > verdict.decision:
                    verdict = inner
            verdict = _rows_of(verdict, outer, named, len(verdict.executes))
        if verdict.fetches:
            own_cursors = dict.fromkeys(verdict.declares, verdict.lineage)
            # A cursor the gateway did not see declared (opened by a function) is masked whole.
            named = [own_cursors.get(name, self._cursors.get(name, ANY_SOURCE)) for name in verdict.fetches]
            verdict = _rows_of(verdict, verdict.lineage, named, len(named))
        if verdict.stored:
            verdict = review_stored(verdict, self._masker)
        return verdict

    def _after_forward(self, verdict: Verdict) -> None:
        for name, inner in verdict.prepares:
            self._sql_prepared[name] = inner
        for dname in verdict.deallocates:
            if dname is None:
                self._sql_prepared.clear()
            else:
                self._sql_prepared.pop(dname, None)
        for declared in verdict.declares:
            self._cursors[declared] = verdict.lineage
        for closed in verdict.closes:
            if closed is None:
                self._cursors.clear()
            else:
                self._cursors.pop(closed, None)

    def _record_refusal(self, sql: str, verdict: Verdict) -> None:
        self.stats.statements += 1
        self.stats.blocked += 1
        self._on_statement(StatementEvent(sql, verdict, self._clock(), 0.0, None, 0, "42501"))

    def _refuse(self, kind: int, sql: str, verdict: Verdict, reason: str | None = None) -> list[bytes]:
        self._record_refusal(sql, verdict)
        refusal = refusal_message(verdict, denied_reason=reason)
        if kind == QUERY:
            self._inflight.append(Entry(QUERY, sql=sql, verdict=verdict, refusal=refusal))
            return [m.query_message(BLOCKED_TEXT)]
        self._open_extended = True
        self._discarding = True
        self._inflight.append(Entry(kind, sql=sql, verdict=verdict, refusal=refusal))
        return [m.parse_message(BLOCKED_STMT, BLOCKED_TEXT)]

    # -- parking (review) ------------------------------------------------------------------

    def resume(self, *, approved: bool, reason: str | None = None) -> None:
        """Release the parked statement: run it, or refuse it with the reviewer's reason."""
        parked = self.parked
        if parked is None:
            return
        self.parked = None
        kind = parked.kind
        if approved:
            if kind == QUERY:
                instead = self._forward_query(parked.sql, parked.verdict, parked.message)
                self.out_upstream.extend(instead if instead is not None else [parked.message])
            elif kind == EXECUTE:
                instead = self._forward_execute(m.parse_execute(parked.message[5:])[0], parked.message)
                self.out_upstream.extend(instead if instead is not None else [parked.message])
            else:
                parse = m.parse_parse(parked.message[5:])
                self._forward_parse(parse, parked.verdict)
                self._statements[parse.name].approved_runs = 1
                self.out_upstream.append(parked.message)
        else:
            # A refused Execute is answered like a refused Parse: an error, then skip to Sync.
            self.out_upstream.extend(
                self._refuse(PARSE if kind == EXECUTE else kind, parked.sql, parked.verdict, reason)
            )
        # The parked message was removed from the buffer when it was parked.
        self._process_client()

    def _park(self, kind: int, sql: str, verdict: Verdict, raw: bytes) -> list[bytes]:
        parked = Parked(sql, verdict, raw, kind)
        explain = self._explain(parked)
        if explain is None:
            self.parked = parked
            return []
        # The review starts once the planner's estimate is in: the client's message is held
        # like a FunctionCall waiting for its lookup.
        self._held_call = raw
        self._explaining = parked
        return explain

    # -- simple query ------------------------------------------------------------------------

    def _on_query(self, sql: str, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(sql)
        if verdict.decision is Decision.BLOCK:
            return self._refuse(QUERY, sql, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(QUERY, sql, verdict, raw)
        return self._forward_query(sql, verdict, raw)

    def _forward_query(self, sql: str, verdict: Verdict, raw: bytes) -> list[bytes] | None:
        """Queue an allowed Query; None sends ``raw`` as is, a list is sent instead."""
        self._after_forward(verdict)
        entry = Entry(QUERY, sql=sql, verdict=verdict, started=self._clock())
        copy = verdict.copy
        if copy is not None and copy.direction == "to_stdout" and self._masker is not None:
            entry.copy_info = copy
            if not copy.columns:
                probe = self._probe(copy)
                if probe is None:
                    verdict = Verdict(
                        Decision.BLOCK,
                        "gateway/copy-masking",
                        "COPY TO STDOUT needs its column names for masking; list the columns explicitly",
                    )
                    return self._refuse(QUERY, sql, verdict)
                entry.awaiting_probe = True
                self._inflight.append(entry)
                return [*probe, raw]
        self._inflight.append(entry)
        return None

    # -- extended query ----------------------------------------------------------------------

    def _on_parse(self, parse: m.Parse, raw: bytes) -> list[bytes] | None:
        self._open_extended = True
        verdict = self._decide(parse.query)
        copy = verdict.copy
        if (
            copy is not None
            and copy.direction == "to_stdout"
            and self._masker is not None
            and not copy.columns
            and verdict.decision is Decision.ALLOW
        ):
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/copy-masking",
                "COPY TO STDOUT in the extended protocol needs an explicit column list for masking",
            )
        if verdict.decision is Decision.BLOCK:
            return self._refuse(PARSE, parse.query, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(PARSE, parse.query, verdict, raw)
        self._forward_parse(parse, verdict)
        return None

    def _forward_parse(self, parse: m.Parse, verdict: Verdict) -> None:
        self._open_extended = True
        self._after_forward(verdict)
        self._statements[parse.name] = Statement(parse.query, verdict)
        self._inflight.append(Entry(PARSE))

    def _on_bind(self, bind: m.Bind) -> list[bytes] | None:
        statement = self._statements.get(bind.statement)
        if statement is None:
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/unknown-prepared",
                f"Bind to prepared statement {bind.statement!r} that the gateway did not see parsed",
            )
            return self._refuse(BIND, f"<bind {bind.statement}>", verdict)
        portal = Portal(statement, bind.result_formats, statement.description)
        self._portals[bind.portal] = portal
        self._inflight.append(Entry(BIND))
        return None

    def _on_execute(self, name: str, raw: bytes) -> list[bytes] | None:
        portal = self._portals.get(name)
        if portal is not None and portal.statement.verdict.decision is Decision.REVIEW:
            # Every execution of a reviewed prepared statement needs an approval: the one
            # given for its Parse covers the first; later ones park again (and run at once
            # when an approval for the rest of the session covers them).
            statement = portal.statement
            if statement.approved_runs > 0:
                statement.approved_runs -= 1
            else:
                return self._park(EXECUTE, statement.sql, statement.verdict, raw)
        return self._forward_execute(name, raw)

    def _forward_execute(self, name: str, raw: bytes) -> list[bytes] | None:
        portal = self._portals.get(name)
        entry = Entry(EXECUTE, started=self._clock(), portal=portal)
        if portal is not None:
            entry.sql = portal.statement.sql
            entry.verdict = portal.statement.verdict
            entry.copy_info = portal.statement.verdict.copy
        if (self._masker is not None or self._record is not None) and portal is not None and portal.description is None:
            # The client never described this portal: ask the upstream ourselves, so the
            # masker knows the columns before the first DataRow arrives.
            describe = Entry(DESCRIBE_P, swallow=True, portal=portal)
            self._inflight.append(describe)
            self._inflight.append(entry)
            return [m.describe_message("P", name), raw]
        if portal is not None and portal.description is not None:
            entry.plan = self._row_plan(entry, portal.description, portal.formats)
        self._inflight.append(entry)
        return None

    # ---------------------------------------------------------------- upstream -> client

    def feed_server(self, data: bytes) -> None:
        buf = self._sbuf
        if buf:
            buf += data
        else:
            buf = bytearray(data)
        n = len(buf)
        pos = 0
        run = 0
        out = self.out_client
        unpack = _U32.unpack_from
        inflight = self._inflight
        egress = self._egress
        while n - pos >= 5:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > self._max:
                raise ProtocolViolation(f"upstream sent an invalid message length {length}")
            end = pos + 1 + length
            if end > n:
                break
            kind = buf[pos]
            head = inflight[0] if inflight else None
            if kind == 0x44:  # DataRow: the hot path
                if head is not None:
                    if egress is not None and self._egress_drop(head, egress, length + 1):
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        pos = run = end
                        continue
                    head.rows += 1
                    if head.explain is not None:
                        head.explain.append(bytes(buf[pos + 5 : end]))
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        run = end
                    elif head.function_oid is not None:
                        self._function_row(head, m.parse_data_row(bytes(buf[pos + 5 : end])))
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        run = end
                    elif head.plan is not None:
                        try:
                            values, count = head.plan.mask_values(m.parse_data_row(bytes(buf[pos + 5 : end])))
                        except MaskingError as exc:
                            raise ResultRefused(f"a result row cannot be masked safely: {exc}") from None
                        if values is not None:
                            if run < pos:
                                out.append(bytes(buf[run:pos]))
                            out.append(m.data_row(values))
                            run = end
                            head.masked += count
                pos = end
                continue
            if head is not None and head.cut is not None and kind != 0x5A:
                replacement = self._on_cut(kind, buf, pos, end, head)
            elif kind == 0x64 and egress is not None and head and self._egress_copy(head, egress, end - pos):
                replacement = b""  # COPY TO output over a limit
            else:
                replacement = self._on_server_message(kind, buf, pos, end, head)
                if head is not None and head.muted and kind not in _PASS_MUTED:
                    replacement = b""  # answered after an egress cut in the same batch
                elif replacement is None and head is not None and head.swallow and kind in ANSWERS:
                    replacement = b""  # the answer to a message the gateway sent on its own
            if replacement is not None:
                if run < pos:
                    out.append(bytes(buf[run:pos]))
                if replacement:
                    out.append(replacement)
                run = end
            pos = end
        if run < pos:
            out.append(bytes(buf[run:pos]))
        self.stats.bytes_to_client += pos
        del buf[:pos]
        self._sbuf = buf

    def _on_server_message(self, kind: int, buf: bytearray, pos: int, end: int, head: Entry | None) -> bytes | None:
        """Handle one backend message. Returns a replacement (b"" drops it) or None."""
        inflight = self._inflight
        if kind == 0x5A:  # ReadyForQuery
            self.txn_status = bytes(buf[end - 1 : end])
            if head is not None and head.kind in (QUERY, SYNC, FUNCTION):
                inflight.popleft()
                if head.function_oid is not None:
                    self._release_function_call(head.function_oid)
                elif head.explain is not None:
                    self._explained(head.explain)
                elif head.kind != SYNC and head.refusal is None:
                    self._complete(head)
            return None
        if head is None:
            # Asynchronous messages: notices, notifications, parameter changes.
            if kind == 0x53:
                return self._parameter_status(bytes(buf[pos + 5 : end]))
            if kind in (0x45, 0x4E):
                return self._scrub(kind, bytes(buf[pos + 5 : end]))
            if kind == 0x41 and self._masker is not None:  # NotificationResponse
                return self._notification(bytes(buf[pos + 5 : end]))
            return None
        if kind == 0x43:  # CommandComplete
            tag = bytes(buf[pos + 5 : end - 1]).decode("utf-8", "replace")
            if head.kind == QUERY:
                head.plan = None
                head.rows = m.command_tag_rows(tag) or head.rows
            elif head.kind == EXECUTE:
                inflight.popleft()
                head.rows = m.command_tag_rows(tag) or head.rows
                self._complete(head)
            return None
        if kind == 0x54:  # RowDescription
            body = bytes(buf[pos + 5 : end])
            if head.kind == QUERY:
                head.plan = self._row_plan(head, body, ())
                return None
            if head.kind == DESCRIBE_S:
                inflight.popleft()
                if head.probe:
                    self._resolve_probe(m.parse_row_description(body))
                elif head.statement is not None:
                    head.statement.description = body
            elif head.kind == DESCRIBE_P:
                inflight.popleft()
                if head.portal is not None:
                    head.portal.description = body
                    self._set_execute_plan(head.portal)
            return None
        if kind == 0x31 or kind == 0x32 or kind == 0x33:  # Parse/Bind/CloseComplete
            if head.kind in (PARSE, BIND, CLOSE):
                inflight.popleft()
            return None
        if kind == 0x6E:  # NoData
            if head.kind in (DESCRIBE_S, DESCRIBE_P):
                inflight.popleft()
            return None
        if kind == 0x74:  # ParameterDescription: the RowDescription/NoData follows
            return None
        if kind == 0x45:  # ErrorResponse
            return self._on_error(bytes(buf[pos + 5 : end]), head)
        if kind in (0x49, 0x73):  # EmptyQueryResponse, PortalSuspended
            if head.kind == EXECUTE:
                inflight.popleft()
                self._complete(head)
            return None
        if kind == 0x48:  # CopyOutResponse
            return self._on_copy_out(bytes(buf[pos + 5 : end]), head)
        if kind == 0x64 and head.copy_plan is not None:  # CopyData of COPY TO
            try:
                data, count = head.copy_plan.mask_copy_data(bytes(buf[pos + 5 : end]))
            except MaskingError as exc:
                raise ResultRefused(f"COPY output cannot be masked safely: {exc}") from None
            head.masked += count
            return m.frame(b"d", data)
        if kind == 0x53:
            return self._parameter_status(bytes(buf[pos + 5 : end]))
        if kind == 0x4E:
            return self._scrub(kind, bytes(buf[pos + 5 : end]), head.sql)
        if kind == 0x41 and self._masker is not None:  # NotificationResponse (own NOTIFY)
            return self._notification(bytes(buf[pos + 5 : end]))
        if kind == 0x57:  # CopyBothResponse: replication only, which start-up refuses
            raise ProtocolViolation("CopyBoth is not supported through the gateway")
        return None

    def _on_error(self, body: bytes, head: Entry) -> bytes | None:
        inflight = self._inflight
        fields = m.parse_fields(body)
        head.error = m.field(fields, "C")
        if head.probe or head.function_oid is not None or head.explain is not None:
            replacement: bytes | None = b""  # the gateway's own lookup: the real statement errs next
        elif head.refusal is not None:
            replacement = head.refusal
        else:
            replacement = self._scrub(0x45, body, self._statement_sql(head))
        if head.kind in (QUERY, SYNC):
            return replacement  # ReadyForQuery ends it
        if head.kind == EXECUTE:
            self._complete(head)
        # The server now skips everything up to Sync: those entries get no answer.
        while inflight and inflight[0].kind != SYNC:
            inflight.popleft()
        return replacement

    @staticmethod
    def _statement_sql(head: Entry) -> str:
        if head.sql:
            return head.sql
        portal = head.portal
        return portal.statement.sql if portal is not None else ""

    def _set_execute_plan(self, portal: Portal) -> None:
        for entry in self._inflight:
            if entry.kind == EXECUTE and entry.portal is portal:
                entry.plan = self._row_plan(entry, portal.description or b"\0\0", portal.formats)
                return

    def _plan(self, description: bytes, formats: tuple[int, ...], lineage: Any = None) -> Any:
        """The masking plan for rows of this RowDescription body and result formats, of a
        statement with this column lineage (`Verdict.lineage`: None unless an output is
        derived from columns, as in ``select reverse(ssn)``).

        Keyed by the raw bytes: a repeated query shape or prepared statement skips the parse.
        """
        if self._masker is None:
            return None
        key = (description, formats, lineage)
        try:
            return self._plans[key]
        except KeyError:
            fields = m.parse_row_description(description)
            plan = self._masker.plan_rows(column_info(fields, formats), lineage)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
            return plan

    def _row_plan(self, entry: Entry, description: bytes, formats: tuple[int, ...]) -> Any:
        """The plan for this entry's rows: the masking plan, wrapped to record when configured."""
        plan = self._plan(description, formats, entry.verdict.lineage if entry.verdict is not None else None)
        if self._record is None:
            return plan
        if entry.capture is None:
            entry.capture = ResultCapture(self._record)
        return RecordingPlan(plan, entry.capture, m.parse_row_description(description), formats)

    def _complete(self, entry: Entry) -> None:
        if entry.swallow or entry.verdict is None:
            return
        self.stats.statements += 1
        self.stats.masked += entry.masked
        now = self._clock()
        self._on_statement(
            StatementEvent(
                entry.sql,
                entry.verdict,
                entry.started,
                now - entry.started,
                entry.rows,
                entry.masked,
                entry.error,
                entry.capture.as_list() if entry.capture is not None else None,
            )
        )

    # -- what the client must not learn ---------------------------------------------------

    def _parameter_status(self, body: bytes) -> bytes | None:
        name, value = m.parse_parameter_status(body)
        if name == "client_encoding" and self._masker is not None and value.upper() in UNSAFE_ENCODINGS:
            # These encodings put ASCII bytes inside multi-byte characters: the masker's
            # byte-level scan could miss or split values, so the session ends instead.
            raise ResultRefused(f"client_encoding {value} is not supported while results are masked")
        if name == "session_authorization":
            return m.parameter_status(name, self._client_user)
        return None

    def _scrub(self, kind: int, body: bytes, statement: str = "") -> bytes | None:
        """Errors and notices must not name the upstream role the gateway logged in as, nor
        show the data they quote (``invalid input syntax for type integer: "<an SSN>"``,
        ``Failing row contains (...)``) when the resource masks results."""
        user = self._upstream_user.encode()
        named = bool(user) and user in body
        if not named and self._masker is None:
            return None
        fields = m.parse_fields(body)
        if named:
            fields = [(c, v.replace(self._upstream_user, self._client_user)) for c, v in fields]
        if self._masker is not None:
            masked = self._masker.mask_message(fields, statement)
            if masked is None and not named:
                return None
            fields = masked if masked is not None else fields
        return m.build_fields(bytes([kind]), fields)

    def _notification(self, body: bytes) -> bytes | None:
        """A NotificationResponse's payload, through the content detectors."""
        assert self._masker is not None
        pid = body[:4]
        channel_end = body.index(b"\0", 4)
        payload = body[channel_end + 1 : -1].decode("utf-8", "surrogateescape")
        masked = self._masker.mask_payload(payload)
        if masked == payload:
            return None
        return m.frame(b"A", pid + body[4 : channel_end + 1] + masked.encode("utf-8", "surrogateescape") + b"\0")
