"""The server half of the relay machine: each backend message routed to the in-flight
entry it answers, checked against what that entry accepts (proxy.inflight), masked,
recorded, or refused.

A message the entry at the head cannot accept means the gateway's model of the session has
drifted from the server's: the session ends with FATAL 08P01 (`SessionDesync`, counted in
jitgate_session_desync_total, the reason recorded with the session's end), and nothing of
that message reaches the client. The one exception is a FATAL ErrorResponse: the server is
going away on its own, and the client is told why.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from broker.masking import MaskingError
from broker.metrics import DESYNCS
from proxy import inflight as k
from proxy import rehearsal as rh
from proxy.egress import EgressMeter
from proxy.exceptions import ResultRefused, SessionDesync
from proxy.inflight import Entry
from proxy.names import DEAD, LIVE, UNCERTAIN, Portal
from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.protocol.rowrun import DATA_ROW, RUN_ROWS, join_scanned, join_text, mask_run, mask_text_run
from proxy.records import MaskerLike, StatementEvent, column_info
from proxy.results import RecordingPlan, ResultCapture, ResultLimits
from proxy.server_messages import ServerMessages
from proxy.session_state import SessionState

_U32 = struct.Struct("!I")
_TRANSITIONS = k.TRANSITIONS
_ROWS = k.ROWS
_COPY_OUT = k.COPY_OUT
_DONE = k.DONE


class Answers:
    def __init__(
        self,
        state: SessionState,
        *,
        masker: MaskerLike | None,
        server: ServerMessages,
        egress: EgressMeter | None,
        record: ResultLimits | None,
        on_statement: Callable[[StatementEvent], None],
        clock: Callable[[], float],
        max_message_bytes: int,
        shadow: bool = False,
    ) -> None:
        self._s = state
        self._shadow = shadow
        self._masker = masker
        self._server = server
        self._egress = egress
        self._record = record
        self._on_statement = on_statement
        self._clock = clock
        self._max = max_message_bytes
        self._sbuf = bytearray()
        self._plans: dict[tuple[bytes, tuple[int, ...] | None, Any], Any] = {}
        self.out: list[bytes] = []

    def use_shadow(self, shadow: bool) -> None:
        """Observe (forward and record what enforcement would refuse) or enforce from now on."""
        self._shadow = shadow

    def use_masker(self, masker: MaskerLike | None) -> None:
        """Plan the rows of what is sent from now on with `masker` (a reload changed the
        resource's masking); entries already planned keep their plans, the plans kept for
        descriptions seen before are forgotten."""
        self._masker = masker
        self._server.use_masker(masker)
        self._plans.clear()

    @property
    def buffered(self) -> bool:
        """Part of a backend message is waiting for the rest."""
        return bool(self._sbuf)

    def feed(self, data: bytes) -> None:
        buf = self._sbuf
        if buf:
            buf += data
        else:
            buf = bytearray(data)
        n = len(buf)
        pos = 0
        run = 0
        gated = 0  # rows before this offset were gated as a run, which opened: one by one
        # While a write is rehearsed every answer is its (nothing else is in flight then):
        # held until its rows are counted (proxy.rehearsal).
        rehearsal = self._s.rehearsal
        pending = None
        out = self.out
        if rehearsal is not None:
            if rehearsal.started:
                out = rehearsal.held
            else:
                pending = rehearsal.start
        unpack = _U32.unpack_from
        inflight = self._s.inflight
        egress = self._egress
        try:
            while n - pos >= 5:
                (length,) = unpack(buf, pos + 1)
                if length < 4 or length > self._max:
                    raise ProtocolViolation(f"upstream sent an invalid message length {length}")
                end = pos + 1 + length
                if end > n:
                    break
                kind = buf[pos]
                head = inflight[0] if inflight else None
                if pending is not None and head is pending:
                    assert rehearsal is not None
                    if run < pos:
                        out.append(bytes(buf[run:pos]))
                    run = pos
                    out = rehearsal.held
                    rehearsal.started = True
                    pending = None
                if (kind == c.DATA_ROW or kind == c.BACKEND_COPY_DATA) and pos >= gated and egress is None:
                    # Runs of rows at once where the plan allows (proxy.protocol.rowrun).
                    plan = self._run_plan(kind, head)
                    if plan is not None:
                        assert head is not None
                        null = head.copy_plan.text_null if kind == c.BACKEND_COPY_DATA else None
                        stop, rows, opened = self._run(buf, pos, n, plan, head, kind, null)
                        if opened:
                            gated = stop  # the gate opened on these rows: one by one
                        elif stop > pos:
                            if rows is not None:
                                if run < pos:
                                    out.append(bytes(buf[run:pos]))
                                out.append(rows)
                                run = stop
                            pos = stop
                            continue
                if kind == c.DATA_ROW:  # the hot path
                    if head is None or head.phase != _ROWS:
                        self._surprise(kind, head, buf, pos, end)
                    assert head is not None
                    plan = head.plan
                    if egress is not None and head.own is None and egress.drop(head, length + 1):
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        pos = run = end
                        continue
                    head.rows += 1
                    if plan is not None:
                        if head.own is not None:  # the gateway's own count: never relayed
                            head.own.row(m.parse_data_row(bytes(buf[pos + 5 : end])), head.own_step)
                            if run < pos:
                                out.append(bytes(buf[run:pos]))
                            pos = run = end
                            continue
                        try:
                            values, count = plan.mask_values(m.parse_data_row(bytes(buf[pos + 5 : end])))
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
                if kind in c.ASYNCHRONOUS:
                    replacement = self._server.asynchronous(kind, bytes(buf[pos + 5 : end]), head)
                else:
                    nxt = _TRANSITIONS[head.kind].get(head.phase, {}).get(kind) if head is not None else None
                    if nxt is None:
                        replacement = self._surprise(kind, head, buf, pos, end)
                    else:
                        assert head is not None
                        replacement = self._answer(kind, bytes(buf[pos + 5 : end]), head, nxt)
                        if head.cut is not None:
                            replacement = self._cut(kind, head, replacement)
                        elif head.muted and kind != c.READY_FOR_QUERY:
                            replacement = b""  # answered after an egress cut in the same batch
                if replacement is not None:
                    if run < pos:
                        out.append(bytes(buf[run:pos]))
                    if replacement:
                        out.append(replacement)
                    run = end
                pos = end
        finally:
            if run < pos:
                out.append(bytes(buf[run:pos]))
            self._s.stats.bytes_to_client += pos
            del buf[:pos]
            self._sbuf = buf

    @staticmethod
    def _run_plan(kind: int, head: Entry | None) -> Any:
        """The plan rows of `kind` answering `head` can be taken with in runs, or None: the
        rows of a result being returned, or the CopyData of a COPY TO STDOUT past its header
        (the conditions under which the per-message path would do nothing but mask them)."""
        if head is None or head.own is not None:
            return None
        if kind == c.DATA_ROW:
            return head.plan if head.phase == _ROWS else None
        if (
            head.phase == _COPY_OUT and head.copy_plan is not None and head.probe is None
            and head.cut is None and not head.muted and not head.uses
        ):
            return head.copy_plan.run_plan
        return None

    def _run(
        self, buf: bytearray, pos: int, n: int, plan: Any, head: Entry, kind: int, null: bytes | None
    ) -> tuple[int, bytes | None, bool]:
        """Takes the complete rows at `pos` as one run (proxy.protocol.rowrun): DataRows, or
        the CopyData of a COPY (`kind`), one binary tuple or (`null`: its NULL string) one
        tab-delimited text line each.

        Returns (the offset past the rows taken, what to send instead of them or None to send
        them as they came, whether the content gate opened on them: they then go one by one).
        An offset of `pos` takes nothing: the message goes the per-row way.
        """
        scanned = plan.scanned
        rewrite = plan.rewrite
        taken = 0
        if scanned is not None:
            if null is None:
                joined, stop, taken = join_scanned(buf, pos, n, scanned, self._max, RUN_ROWS, kind)
            else:
                joined, stop, taken = join_text(buf, pos, n, null, scanned, self._max, RUN_ROWS)
            if not taken:
                return pos, None, False
            if plan.triggered(joined):
                return stop, None, True
            if rewrite is None:
                head.rows += taken
                return stop, None, False
        if rewrite is None:
            return pos, None, False
        fns = plan.rewrite_fns
        most = taken or RUN_ROWS
        try:
            if null is None:
                rows, stop, taken, changed = mask_run(buf, pos, n, rewrite, fns, self._max, most, kind)
            else:
                rows, stop, taken, changed = mask_text_run(buf, pos, n, null, rewrite, fns, self._max, most)
        except MaskingError as exc:
            what = "a result row" if kind == DATA_ROW else "COPY output"
            raise ResultRefused(f"{what} cannot be masked safely: {exc}") from None
        head.rows += taken
        head.masked += changed
        return stop, (rows if taken else None), False

    def _surprise(self, kind: int, head: Entry | None, buf: bytearray, pos: int, end: int) -> bytes:
        """A backend message the model did not expect: relay a FATAL (the server is going
        away on its own), otherwise end the session; never forward it as it is."""
        if kind == c.ERROR_RESPONSE:
            body = bytes(buf[pos + 5 : end])
            if m.field(m.parse_fields(body), "V") in ("FATAL", "PANIC"):
                return self._server.scrub(kind, body, "") or bytes(buf[pos:end])
        expected = "nothing" if head is None else f"an answer to {head.name}"
        DESYNCS.inc()
        raise SessionDesync(f"the server sent {chr(kind)!r} when the gateway expected {expected}")

    def _answer(self, kind: int, body: bytes, head: Entry, nxt: int) -> bytes | None:
        """Act on one answer `head` accepts; returns a replacement (b"" drops it) or None."""
        head.phase = nxt
        entry_kind = head.kind
        if head.probe is not None:
            return self._probe_answer(kind, body, head, nxt)
        if head.own is not None:
            return self._own_answer(kind, body, head, nxt)
        if head.uses and not self._shadow:  # observe enforces nothing: it follows the server
            self._check_uses(head)
        if kind == c.ERROR_RESPONSE:
            return self._on_error(body, head)
        if nxt == _DONE:
            self._s.inflight.popleft()
        if kind == c.READY_FOR_QUERY:
            self._ready(body, head)
            if self._s.rehearsal is not None:
                # The end of the rehearsed unit: its status is the gateway's transaction's;
                # the client gets the one it would have seen, once the rows are counted.
                self._s.rehearsal.unit_status = body[:1]
                return b""
        elif kind == c.ROW_DESCRIPTION:
            return self._row_description(body, head)
        elif kind == c.NO_DATA:
            self._described(head, b"")
            if entry_kind == k.OWN_DESCRIBE_P:
                return b""
        elif kind == c.COMMAND_COMPLETE:
            if body.startswith(b"ROLLBACK"):
                self._s.forget_cursors()  # ROLLBACK TO SAVEPOINT closes cursors opened since
            if head.cut is None:  # a cut statement counts the rows the client got
                head.rows = m.command_tag_rows(body[:-1].decode("utf-8", "replace")) or head.rows
            if entry_kind == k.QUERY:
                head.plan = None
            else:
                self._s.settle(head.made, LIVE)
                self.complete(head)
        elif kind == c.EMPTY_QUERY or kind == c.PORTAL_SUSPENDED:
            if entry_kind == k.EXECUTE:
                self._s.settle(head.made, LIVE)
                self.complete(head)
        elif kind == c.PARSE_COMPLETE or kind == c.CLOSE_COMPLETE:
            self._s.settle(head.made, LIVE)
        elif kind == c.BIND_COMPLETE:
            self._s.settle(head.made, LIVE)  # `uses` checked what it bound
        elif kind == c.FUNCTION_RESULT:
            return self._function_result(body, head)
        elif kind == c.COPY_OUT_RESPONSE:
            head.copy_plan = self._server.copy_plan(body, head)
        elif kind == c.BACKEND_COPY_DATA:
            return self._copy_data(body, head)
        elif kind == c.COPY_IN_RESPONSE:
            # The server reads COPY data now, and ignores Sync and Flush until its end.
            for entry in [e for e in self._s.inflight if e.sync_after_copy is head]:
                self._s.inflight.remove(entry)
        return None

    def value_plan(self, name: str, type_oid: int, result_format: int, verdict: Any) -> Any:
        """The masking plan of a single value (a fast-path call's result), as a one-column
        result named `name` of that type would get."""
        if self._masker is None:
            return None
        from broker.masking import ColumnInfo

        return self._masker.plan_rows([ColumnInfo(name, type_oid, result_format)], verdict.lineage)

    def _function_result(self, body: bytes, head: Entry) -> bytes | None:
        plan = head.plan
        if plan is None:
            return None
        size = int.from_bytes(body[:4], "big", signed=True)
        value = None if size < 0 else body[4 : 4 + size]
        try:
            values, count = plan.mask_values([value])
        except MaskingError as exc:
            raise ResultRefused(f"a function result cannot be masked safely: {exc}") from None
        if values is None:
            return None
        head.masked += count
        masked = values[0]
        encoded = b"\xff\xff\xff\xff" if masked is None else len(masked).to_bytes(4, "big") + masked
        return m.frame(b"V", encoded)

    def _settle_own(self, kind: int, head: Entry, nxt: int) -> None:
        """Move the queue past an answer to one of the gateway's own messages: an error ends
        the message and, as the server does, everything up to its Sync; a last answer ends it."""
        if kind == c.ERROR_RESPONSE:
            if head.kind != k.SYNC:
                self._s.inflight.popleft()
                self._s.discard_to_sync()
        elif nxt == _DONE:
            self._s.inflight.popleft()

    def _probe_answer(self, kind: int, body: bytes, head: Entry, nxt: int) -> bytes:
        """An answer to the gateway's own COPY probe: kept, never relayed."""
        probe = head.probe
        assert probe is not None
        self._settle_own(kind, head, nxt)
        if kind == c.ERROR_RESPONSE:
            probe.failed = True
        elif kind == c.ROW_DESCRIPTION:
            probe.columns = m.parse_row_description(body)
        elif kind == c.READY_FOR_QUERY:
            self._s.txn_status = body[:1]
            probe.done = True
        return b""

    def _own_answer(self, kind: int, body: bytes, head: Entry, nxt: int) -> bytes:
        """An answer to one of the gateway's own messages around a rehearsed write: kept by
        the rehearsal, never relayed (proxy.rehearsal)."""
        rehearsal = head.own
        step = head.own_step
        self._settle_own(kind, head, nxt)
        if kind == c.ERROR_RESPONSE:
            error = self._server.scrub(kind, body, "") or m.frame(b"E", body)
            if step == rh.FINAL:
                rehearsal.final_error = rehearsal.final_error or error
            elif rehearsal.own_error is None and not (step == rh.MEASURE_AFTER and rehearsal.unit_failed):
                rehearsal.own_error, rehearsal.own_error_step = error, step
            return b""
        if kind == c.PARSE_COMPLETE and step == rh.PRE:
            rehearsal.began = True
        if kind == c.READY_FOR_QUERY:
            self._s.txn_status = body[:1]
            if self._s.txn_status == b"I":
                self._s.portals.end_transaction()
            if step == rh.MEASURE_AFTER:
                rehearsal.measured = True
            else:
                rehearsal.finished = True
        elif kind == c.COMMAND_COMPLETE and body.startswith(b"ROLLBACK"):
            self._s.forget_cursors()  # what the unit declared is gone with it
        return b""

    def _check_uses(self, head: Entry) -> None:
        """Every name version `head` was judged or masked by is what the server has now; if
        one failed or is uncertain, the server ran something else."""
        for version in head.uses:
            if version.state != LIVE:
                DESYNCS.inc()
                raise SessionDesync(
                    f"{head.name} used a prepared statement or portal definition the server did not keep"
                )
        head.uses = ()

    def _ready(self, body: bytes, head: Entry) -> None:
        self._s.txn_status = body[:1]
        if head.kind == k.QUERY:
            # A Query that failed part-way may have made some of its names, or not.
            self._s.settle(head.made, UNCERTAIN if head.error is not None else LIVE)
            self.complete(head)
        elif head.kind == k.FUNCTION:
            self.complete(head)
        if self._s.copy_from is head:
            self._s.copy_from = None
        if self._s.txn_status == b"I":
            self._s.portals.end_transaction()

    def _row_description(self, body: bytes, head: Entry) -> bytes | None:
        if head.kind == k.QUERY:
            head.plan = self.row_plan(head, body, None)
            return None
        self._described(head, body)
        return b"" if head.kind == k.OWN_DESCRIBE_P else None

    def _described(self, head: Entry, description: bytes) -> None:
        if head.kind == k.DESCRIBE_S:
            if head.statement is not None and head.statement.state != DEAD:
                head.statement.description = description
            return
        portal = head.portal
        if portal is None:
            return
        portal.description = description
        if head.then is not None:
            self.describe_rows(head.then, portal)  # the rows of the client's next Execute
        elif head.kind == k.OWN_DESCRIBE_P:
            following = self._s.inflight[0] if self._s.inflight else None
            if following is None or following.kind != k.EXECUTE or following.portal is not portal:
                DESYNCS.inc()
                raise SessionDesync("the gateway's Describe was not followed by its Execute")
            self.describe_rows(following, portal)

    def _on_error(self, body: bytes, head: Entry) -> bytes | None:
        head.error = m.field(m.parse_fields(body), "C")
        if head.refusal is not None:
            replacement: bytes | None = head.refusal
        else:
            replacement = self._server.scrub(c.ERROR_RESPONSE, body, self._statement_sql(head))
        if head.kind not in k.EXTENDED_KINDS:
            return replacement  # Query, FunctionCall, Sync: ReadyForQuery ends it
        self._s.inflight.popleft()
        for version in head.made:
            if version.name == "" and head.kind in (k.PARSE, k.BIND):
                version.previous = None  # a failed unnamed Parse or Bind drops the old one
        self._s.settle(head.made, DEAD)
        if head.kind == k.EXECUTE:
            self.complete(head)
        if self._s.copy_from is head:
            self._s.copy_from = None  # the COPY failed: the server reads no COPY data now
        self._s.discard_to_sync()
        return replacement

    def _cut(self, kind: int, head: Entry, replacement: bytes | None) -> bytes | None:
        """A backend message for a statement cut by an egress limit.

        Its end (CommandComplete, ErrorResponse, PortalSuspended, EmptyQuery) becomes the
        egress error; everything else of it is dropped. An Execute's batch is then over for
        the client, as after any error: the answers to what follows it up to Sync are not
        relayed, and what the client sends before its Sync is not forwarded.
        """
        if kind == c.READY_FOR_QUERY:
            return replacement
        if kind not in (c.COMMAND_COMPLETE, c.ERROR_RESPONSE, c.EMPTY_QUERY, c.PORTAL_SUSPENDED) or head.cut_sent:
            return b""
        head.cut_sent = True
        assert self._egress is not None
        error = self._egress.error(head)
        if head.kind != k.EXECUTE or kind == c.ERROR_RESPONSE:
            return error  # a Query's ReadyForQuery completes it; an error already skips to Sync
        for entry in self._s.inflight:
            if entry.kind == k.SYNC or entry.kind == k.QUERY:
                break
            entry.muted = True
        if not any(entry.kind == k.SYNC for entry in self._s.inflight):
            self._s.skipping = True
        return error

    def _copy_data(self, body: bytes, head: Entry) -> bytes | None:
        egress = self._egress
        if egress is not None and egress.drop(head, len(body) + 5):
            return b""  # COPY TO output over a limit
        if egress is not None:
            head.rows += 1  # until CommandComplete's `COPY n` says
        if head.copy_plan is None:
            return None
        try:
            data, count = head.copy_plan.mask_copy_data(body)
        except MaskingError as exc:
            raise ResultRefused(f"COPY output cannot be masked safely: {exc}") from None
        head.masked += count
        return m.frame(b"d", data)

    @staticmethod
    def _statement_sql(head: Entry) -> str:
        if head.sql:
            return head.sql
        portal = head.portal
        return portal.statement.sql if portal is not None and portal.statement is not None else ""

    def _plan(self, description: bytes, formats: tuple[int, ...] | None, lineage: Any = None) -> Any:
        """The masking plan for rows of this RowDescription body and result formats (None:
        the formats the RowDescription states), of a statement with this column lineage.

        Keyed by the raw bytes: a repeated query shape or prepared statement skips the parse.
        """
        if self._masker is None:
            return None
        key = (description, formats, lineage)
        try:
            return self._plans[key]
        except KeyError:
            fields = m.parse_row_description(description)
            if formats is None:
                formats = tuple(f.format for f in fields)
            plan = self._masker.plan_rows(column_info(fields, formats), lineage)
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[key] = plan
            return plan

    def row_plan(self, entry: Entry, description: bytes, formats: tuple[int, ...] | None) -> Any:
        """The plan for this entry's rows: the masking plan, wrapped to record when configured."""
        plan = self._plan(description, formats, entry.verdict.lineage if entry.verdict is not None else None)
        if self._record is None:
            return plan
        if entry.capture is None:
            entry.capture = ResultCapture(self._record)
        fields = m.parse_row_description(description)
        if formats is None:
            formats = tuple(f.format for f in fields)
        return RecordingPlan(plan, entry.capture, fields, formats)

    def complete(self, entry: Entry) -> None:
        if entry.verdict is None or entry.refusal is not None:
            return
        rehearsal = self._s.rehearsal
        if rehearsal is not None and rehearsal.started:
            # Recorded once its fate is known: as run when kept, not at all when parked (the
            # decision and the approved run are what the record holds then).
            rehearsal.completed.append(entry)
            return
        self._s.stats.statements += 1
        self._s.stats.masked += entry.masked
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
                approval_id=entry.verdict.approval_id,
            )
        )

    def describe_rows(self, entry: Entry, portal: Portal) -> None:
        if portal.description:
            entry.plan = self.row_plan(entry, portal.description, portal.formats)
            entry.phase = k.ROWS
        else:
            entry.phase = k.NO_ROWS  # NoData: a DataRow would be a surprise
