"""The per-session relay state machine: policy on the way in, masking on the way out.

Sans-IO like the codec below it: ``feed_client`` and ``feed_server`` take bytes and leave
what must be written in ``out_upstream`` / ``out_client``; the asyncio layer
(``proxy.relay``) only moves bytes and runs the awaitable steps (approval waits, the side
channel's lookups).

The model. Every message that gets an answer is queued as an `Entry` (proxy.inflight) in the
order the server answers them; each backend message goes to the entry at the head, which
must accept it in its current phase. One that does not means the gateway's model of the
session has drifted from the server's: the session ends with FATAL 08P01
(`SessionDesync`), and nothing of that message reaches the client. Prepared statement and
portal names are tracked as the server holds them, whether protocol messages or SQL made
them (proxy.names); the verdict of every statement is composed in proxy.decide.

How a refused statement is answered. The machine *substitutes* the refused message with one
that makes the upstream itself fail at that point (a Parse or Query of a fixed text that is a
syntax error), then replaces the upstream's ErrorResponse for it with the gateway's own
(42501, naming rule and reason). The upstream never sees the refused text, and the
transaction state the client is told is the one the upstream really has.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from broker.masking import MaskingError
from broker.metrics import DESYNCS
from broker.policy.model import Decision, Lineage, Verdict
from proxy import inflight as k
from proxy.decide import ANY_SOURCE, Context, decide, function_call_sql
from proxy.egress import EgressLimits, EgressMeter
from proxy.exceptions import ResultRefused, SessionDesync
from proxy.inflight import Entry
from proxy.names import DEAD, LIVE, PENDING, UNCERTAIN, Names, Portal, Statement, Version
from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, ProtocolViolation
from proxy.records import (
    BLOCKED_STMT,
    BLOCKED_TEXT,
    Classifier,
    MaskerLike,
    Parked,
    StatementEvent,
    Stats,
    column_info,
    refusal_message,
)
from proxy.results import RecordingPlan, ResultCapture, ResultLimits
from proxy.server_messages import ServerMessages
from proxy.side_channel import CopyColumns, FunctionName, Lookup, copy_columns_query

_U32 = struct.Struct("!I")
_TRANSITIONS = k.TRANSITIONS
_ROWS = k.ROWS
_DONE = k.DONE
_HELD = frozenset((c.QUERY, c.PARSE, c.EXECUTE, c.FUNCTION_CALL))


class SessionMachine:
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
        self._egress = EgressMeter(egress, on_egress_limit, resource) if egress is not None else None
        # Result recording wraps the row plan (proxy.results), so off costs nothing per row.
        self._record = record_results
        self._masker = masker
        self._server = ServerMessages(masker=masker, client_user=client_user, upstream_user=upstream_user)
        self._on_statement = on_statement
        self._max = max_message_bytes
        self._clock = clock
        self._cbuf = bytearray()
        self._sbuf = bytearray()
        self.out_upstream: list[bytes] = []
        self.out_client: list[bytes] = []
        self._inflight: deque[Entry] = deque()
        self._statements: Names[Statement] = Names()
        self._portals: Names[Portal] = Names()
        self._plans: dict[tuple[bytes, tuple[int, ...] | None, Any], Any] = {}
        self._open_extended = False  # extended messages sent since the last Sync
        # The server skips every message up to the next Sync (an error in an extended batch,
        # ours or its own): until the client's Sync nothing is forwarded.
        self._skipping = False
        self._copy_from: Entry | None = None  # a COPY FROM STDIN whose data the client has not ended
        self.parked: Parked | None = None
        self.waiting: Lookup | None = None  # a side-channel question the client's next message waits for
        self._held: tuple[bytes, Any] | None = None  # that message, and what it needs besides
        self._function_names: dict[int, tuple[str, str]] = {}
        self.terminated = False
        self.txn_status = b"I"
        self.stats = Stats()

    # ---------------------------------------------------------------- the relay's view

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command outside a transaction: nothing in flight,
        parked or waiting, no extended-protocol batch left open, nothing of the client's
        unprocessed."""
        return (
            self.txn_status == b"I" and not self._inflight and self.parked is None and self.waiting is None
            and not self._open_extended and not self._cbuf
        )

    @property
    def buffered_client(self) -> int:
        """Bytes received from the client and not processed yet (e.g. while parked)."""
        return len(self._cbuf)

    @property
    def egress_counts(self) -> tuple[int, int]:
        """Rows and bytes this session has returned to the client (counted under egress limits)."""
        meter = self._egress
        return (meter.session_rows, meter.session_bytes) if meter is not None else (0, 0)

    def set_agent_budget(self, budget: Any) -> None:
        if self._egress is not None:
            self._egress.set_agent_budget(budget)

    # ---------------------------------------------------------------- client -> upstream

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
        while n - pos >= 5 and self.parked is None and self.waiting is None:
            (length,) = unpack(buf, pos + 1)
            if length < 4 or length > self._max:
                self._cbuf = bytearray()
                raise ProtocolViolation(
                    f"message of {length} bytes is invalid or exceeds the limit of {self._max} bytes",
                    sqlstate="54000" if length > self._max else "08P01",
                )
            kind = buf[pos]
            if kind not in c.FRONTEND:
                # Checked before waiting for the body: a second StartupMessage (type byte 0)
                # would otherwise have the proxy wait for a length it made up.
                self._cbuf = bytearray()
                raise ProtocolViolation(f"unexpected frontend message type 0x{kind:02x}")
            end = pos + 1 + length
            if end > n:
                break
            if self._skipping and kind != c.SYNC and kind != c.TERMINATE:
                # The server would skip it: it is not sent at all.
                if run < pos:
                    out.append(bytes(buf[run:pos]))
                pos = run = end
                continue
            if self._copy_from is not None and not self._in_copy(kind):
                self._cbuf = bytearray()
                raise ProtocolViolation(
                    f"message {chr(kind)!r} while the server may be reading COPY FROM STDIN data; "
                    "end the COPY (CopyDone or CopyFail) first"
                )
            if kind in c.COPY_IN or kind == c.FLUSH:
                # No answer: CopyData/Done/Fail belong to a COPY FROM (or are ignored), Flush
                # only asks for what is pending.
                pos = end
                continue
            if kind == c.SYNC:
                entry = Entry(k.SYNC)
                entry.sync_after_copy = self._copy_from
                self._inflight.append(entry)
                self._open_extended = self._skipping = False
                pos = end
                continue
            body = bytes(buf[pos + 5 : end])
            # Only what may be parked or held needs the whole message.
            raw = bytes(buf[pos:end]) if kind in _HELD else b""
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

    def _in_copy(self, kind: int) -> bool:
        """While a COPY FROM STDIN may be reading, the client sends its data, its end, and
        Sync/Flush (which the server ignores then: libpq sends them not knowing it was COPY)."""
        if kind == c.COPY_DONE or kind == c.COPY_FAIL:
            self._copy_from = None
            return True
        return kind == c.COPY_DATA or kind == c.SYNC or kind == c.FLUSH

    def _on_client_message(self, kind: int, body: bytes, raw: bytes) -> list[bytes] | None:
        """Handle one frontend message; None forwards it unchanged, a list replaces it."""
        if kind == c.QUERY:
            return self._on_query(m.parse_query(body), raw)
        if kind == c.FUNCTION_CALL:
            return self._on_function_call(m.parse_function_call_oid(body), raw)
        if kind == c.TERMINATE:
            self.terminated = True
            return None
        self._open_extended = True
        if kind == c.PARSE:
            return self._on_parse(m.parse_parse(body), raw)
        if kind == c.BIND:
            return self._on_bind(m.parse_bind(body))
        if kind == c.EXECUTE:
            return self._on_execute(m.parse_execute(body)[0], raw)
        what, name = m.parse_describe_or_close(body)
        if kind == c.DESCRIBE:
            if what == "S":
                self._inflight.append(Entry(k.DESCRIBE_S, statement=_the(self._statements.get(name), Statement)))
            else:
                self._inflight.append(Entry(k.DESCRIBE_P, portal=_the(self._portals.get(name), Portal)))
            return None
        # Close
        names = self._statements if what == "S" else self._portals
        self._inflight.append(Entry(k.CLOSE, made=(names.drop(name),)))
        return None

    # -- policy ---------------------------------------------------------------------------

    def _decide(self, sql: str, *, extended: bool = False) -> Verdict:
        return decide(self._classify(sql), Context(masker=self._masker, names=self, extended=extended))

    def prepared(self, name: str) -> Verdict | None:
        """proxy.decide.Names: the verdict of what `name` holds, None when uncertain or unknown."""
        statement = _the(self._statements.get(name), Statement)
        return statement.verdict if statement is not None else None

    def cursor_rows(self, name: str) -> Lineage | None:
        """proxy.decide.Names: the lineage of portal `name`'s rows (ANY_SOURCE when unknown)."""
        portal = _the(self._portals.get(name), Portal)
        if portal is None:
            return ANY_SOURCE
        if portal.statement is not None:
            return portal.statement.verdict.lineage if portal.statement.verdict is not None else ANY_SOURCE
        return portal.lineage

    def _sql_names(self, sql: str, verdict: Verdict) -> tuple[Version, ...]:
        """The names a Query's statements make and drop (drops first: ``DEALLOCATE s;
        PREPARE s AS ...`` is the common order)."""
        made: list[Version] = []
        for dname in verdict.deallocates:
            made.extend(self._statements.drop_all() if dname is None else [self._statements.drop(dname)])
        for closed in verdict.closes:
            made.extend(self._portals.drop_all() if closed is None else [self._portals.drop(closed)])
        for name, inner in verdict.prepares:
            made.append(self._statements.define(name, Statement(sql=sql, verdict=inner)))
        for declared in verdict.declares:
            made.append(self._portals.define(declared, Portal(lineage=verdict.lineage, cursor=True)))
        return tuple(made)

    def _record_refusal(self, sql: str, verdict: Verdict) -> None:
        self.stats.statements += 1
        self.stats.blocked += 1
        self._on_statement(StatementEvent(sql, verdict, self._clock(), 0.0, None, 0, "42501"))

    def _refuse(self, kind: int, sql: str, verdict: Verdict, reason: str | None = None) -> list[bytes]:
        """Refuse a Query or FunctionCall (`kind` QUERY), or an extended message (else)."""
        self._record_refusal(sql, verdict)
        refusal = refusal_message(verdict, denied_reason=reason)
        if kind == c.QUERY:
            self._inflight.append(Entry(k.REFUSED_QUERY, sql=sql, verdict=verdict, refusal=refusal))
            return [m.query_message(BLOCKED_TEXT)]
        self._open_extended = True
        self._skipping = True  # the server skips to Sync after the error; so does the gateway
        self._inflight.append(Entry(k.REFUSED, sql=sql, verdict=verdict, refusal=refusal))
        return [m.parse_message(BLOCKED_STMT, BLOCKED_TEXT)]

    # -- waiting: parked for review, or for the side channel ---------------------------------

    def resume(self, *, approved: bool, reason: str | None = None) -> None:
        """Release the parked statement: run it, or refuse it with the reviewer's reason."""
        parked = self.parked
        if parked is None:
            return
        self.parked = None
        kind = parked.kind
        if not approved:
            self.out_upstream.extend(self._refuse(kind, parked.sql, parked.verdict, reason))
        elif kind == c.QUERY:
            self._send(self._forward_query(parked.sql, parked.verdict, parked.message), parked.message)
        elif kind == c.EXECUTE:
            self._send(self._forward_execute(m.parse_execute(parked.message[5:])[0], parked.message), parked.message)
        else:
            statement = self._forward_parse(m.parse_parse(parked.message[5:]), parked.verdict)
            statement.approved_runs = 1
            self.out_upstream.append(parked.message)
        # The parked message was removed from the buffer when it was parked.
        self._process_client()

    def lookup_done(self, answer: Any) -> None:
        """The side channel's answer to `waiting` (None: it could not tell)."""
        lookup, held = self.waiting, self._held
        self.waiting = self._held = None
        if lookup is None or held is None:
            return
        raw, extra = held
        if isinstance(lookup, FunctionName):
            if answer is not None:
                self._function_names[lookup.oid] = answer
            self._send(self._decide_function_call(lookup.oid, raw), raw)
        else:
            sql, verdict = extra
            if answer is None:
                verdict = Verdict(
                    Decision.BLOCK,
                    "gateway/copy-masking",
                    "COPY TO STDOUT needs its column names for masking; list the columns explicitly",
                )
                self.out_upstream.extend(self._refuse(c.QUERY, sql, verdict))
            else:
                self._send(self._forward_query(sql, verdict, raw, columns=answer), raw)
        self._process_client()

    def _send(self, instead: list[bytes] | None, raw: bytes) -> None:
        self.out_upstream.extend(instead if instead is not None else [raw])

    def _wait(self, lookup: Lookup, raw: bytes, extra: Any = None) -> list[bytes]:
        self.waiting = lookup
        self._held = (raw, extra)
        return []

    def _park(self, kind: int, sql: str, verdict: Verdict, raw: bytes) -> list[bytes]:
        self.parked = Parked(sql, verdict, raw, kind)
        return []

    # -- simple query and function call -----------------------------------------------------

    def _on_query(self, sql: str, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(sql)
        if verdict.decision is Decision.BLOCK:
            return self._refuse(c.QUERY, sql, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(c.QUERY, sql, verdict, raw)
        return self._forward_query(sql, verdict, raw)

    def _forward_query(self, sql: str, verdict: Verdict, raw: bytes, columns: Any = None) -> list[bytes] | None:
        """Queue an allowed Query; None sends ``raw`` as is, a list is sent instead."""
        copy = verdict.copy
        if (
            columns is None and copy is not None and copy.direction == "to_stdout"
            and self._masker is not None and not copy.columns
        ):
            # The masker needs the COPY's columns, which COPY itself never describes.
            text = copy_columns_query(copy)
            if text is not None:
                return self._wait(CopyColumns(text), raw, (sql, verdict))
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/copy-masking",
                "COPY TO STDOUT needs its column names for masking; list the columns explicitly",
            )
            return self._refuse(c.QUERY, sql, verdict)
        entry = Entry(k.QUERY, sql=sql, verdict=verdict, started=self._clock(), copy_columns=columns)
        entry.made = self._sql_names(sql, verdict)
        self._copy_from_starts(entry, verdict)
        self._inflight.append(entry)
        return None

    def _copy_from_starts(self, entry: Entry, verdict: Verdict) -> None:
        if verdict.copy is not None and verdict.copy.direction == "from_stdin":
            self._copy_from = entry

    def _on_function_call(self, oid: int, raw: bytes) -> list[bytes] | None:
        """A FunctionCall names its function by OID: the side channel resolves the name, then
        the policy judges ``SELECT schema.function()`` as it would the SQL."""
        if oid not in self._function_names:
            return self._wait(FunctionName(oid), raw)
        return self._decide_function_call(oid, raw)

    def _decide_function_call(self, oid: int, raw: bytes) -> list[bytes] | None:
        name = self._function_names.get(oid)
        if name is None:
            verdict = Verdict(Decision.BLOCK, "gateway/function-call", f"no function with OID {oid} could be found")
            return self._refuse(c.QUERY, "<FunctionCall>", verdict)
        sql = function_call_sql(*name)
        verdict = self._decide(sql)
        if verdict.decision is not Decision.ALLOW:
            # Review of a fast-path call is refused too: there is no statement to re-run.
            return self._refuse(c.QUERY, sql, verdict)
        self._inflight.append(Entry(k.FUNCTION, sql=sql, verdict=verdict, started=self._clock()))
        return None

    # -- extended query ----------------------------------------------------------------------

    def _on_parse(self, parse: m.Parse, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(parse.query, extended=True)
        if verdict.decision is Decision.BLOCK:
            return self._refuse(c.PARSE, parse.query, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(c.PARSE, parse.query, verdict, raw)
        self._forward_parse(parse, verdict)
        return None

    def _forward_parse(self, parse: m.Parse, verdict: Verdict) -> Statement:
        self._open_extended = True
        statement = self._statements.define(parse.name, Statement(name=parse.name, sql=parse.query, verdict=verdict))
        self._inflight.append(Entry(k.PARSE, statement=statement, made=(statement,)))
        return statement

    def _on_bind(self, bind: m.Bind) -> list[bytes] | None:
        statement = _the(self._statements.get(bind.statement), Statement)
        if statement is None:
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/unknown-prepared",
                f"Bind to prepared statement {bind.statement!r} that the gateway cannot account for",
            )
            return self._refuse(c.BIND, f"<bind {bind.statement}>", verdict)
        portal = Portal(
            name=bind.portal, statement=statement, formats=bind.result_formats, description=statement.description
        )
        self._portals.define(bind.portal, portal)
        self._inflight.append(Entry(k.BIND, portal=portal, made=(portal,)))
        return None

    def _on_execute(self, name: str, raw: bytes) -> list[bytes] | None:
        portal = _the(self._portals.get(name), Portal)
        if portal is None:
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/unknown-portal",
                f"Execute of portal {name!r} that the gateway cannot account for",
            )
            return self._refuse(c.EXECUTE, f"<execute {name}>", verdict)
        statement = portal.statement
        if statement is not None and statement.verdict is not None and statement.verdict.decision is Decision.REVIEW:
            # Every execution of a reviewed prepared statement needs an approval: the one
            # given for its Parse covers the first; later ones park again (and run at once
            # when an approval for the rest of the session covers them).
            if statement.approved_runs > 0:
                statement.approved_runs -= 1
            else:
                return self._park(c.EXECUTE, statement.sql, statement.verdict, raw)
        return self._forward_execute(name, raw)

    def _forward_execute(self, name: str, raw: bytes) -> list[bytes] | None:
        portal = _the(self._portals.get(name), Portal)
        if portal is None:  # gone while the Execute was parked
            return self._on_execute(name, raw)
        statement = portal.statement
        verdict = statement.verdict if statement is not None else None
        if verdict is None:  # a DECLAREd cursor: its rows are what it was declared for
            verdict = Verdict(Decision.ALLOW, "gateway/cursor", "rows of a declared cursor", lineage=portal.lineage)
        entry = Entry(k.EXECUTE, started=self._clock(), portal=portal, verdict=verdict, phase=k.ROWS)
        if statement is not None:
            entry.sql = statement.sql
            # A PREPARE, DECLARE, DEALLOCATE or CLOSE makes or drops names when it runs.
            entry.made = self._sql_names(statement.sql, verdict)
        else:
            entry.sql = f"<execute cursor {name}>"
        self._copy_from_starts(entry, verdict)
        if self._masker is None and self._record is None:
            self._inflight.append(entry)
            return None
        if portal.description is None:
            # Nobody described this portal yet: ask the upstream ourselves, so the masker
            # knows the columns before the first DataRow arrives.
            entry.phase = k.NO_ROWS
            self._inflight.append(Entry(k.OWN_DESCRIBE_P, portal=portal))
            self._inflight.append(entry)
            return [m.describe_message("P", name), raw]
        self._describe_rows(entry, portal)
        self._inflight.append(entry)
        return None

    def _describe_rows(self, entry: Entry, portal: Portal) -> None:
        if portal.description:
            entry.plan = self._row_plan(entry, portal.description, portal.formats)
            entry.phase = k.ROWS
        else:
            entry.phase = k.NO_ROWS  # NoData: a DataRow would be a surprise

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
                if kind == c.DATA_ROW:  # the hot path
                    if head is None or head.phase != _ROWS:
                        self._surprise(kind, head, buf, pos, end)
                    assert head is not None
                    if egress is not None and egress.drop(head, length + 1):
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        pos = run = end
                        continue
                    head.rows += 1
                    plan = head.plan
                    if plan is not None:
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
            self.stats.bytes_to_client += pos
            del buf[:pos]
            self._sbuf = buf

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
        if kind == c.ERROR_RESPONSE:
            return self._on_error(body, head)
        if nxt == _DONE:
            self._inflight.popleft()
        if kind == c.READY_FOR_QUERY:
            self._ready(body, head)
        elif kind == c.ROW_DESCRIPTION:
            return self._row_description(body, head)
        elif kind == c.NO_DATA:
            self._described(head, b"")
            if entry_kind == k.OWN_DESCRIBE_P:
                return b""
        elif kind == c.COMMAND_COMPLETE:
            if head.cut is None:  # a cut statement counts the rows the client got
                head.rows = m.command_tag_rows(body[:-1].decode("utf-8", "replace")) or head.rows
            if entry_kind == k.QUERY:
                head.plan = None
            else:
                self._settle(head.made, LIVE)
                self._complete(head)
        elif kind == c.EMPTY_QUERY or kind == c.PORTAL_SUSPENDED:
            if entry_kind == k.EXECUTE:
                self._settle(head.made, LIVE)
                self._complete(head)
        elif kind == c.PARSE_COMPLETE or kind == c.CLOSE_COMPLETE:
            self._settle(head.made, LIVE)
        elif kind == c.BIND_COMPLETE:
            portal = head.portal
            if portal is not None and portal.statement is not None and portal.statement.state == DEAD:
                # The server bound something the gateway did not expect it to hold.
                DESYNCS.inc()
                raise SessionDesync("the server bound a prepared statement the gateway saw fail")
            self._settle(head.made, LIVE)
        elif kind == c.COPY_OUT_RESPONSE:
            head.copy_plan = self._server.copy_plan(body, head)
        elif kind == c.BACKEND_COPY_DATA:
            return self._copy_data(body, head)
        elif kind == c.COPY_IN_RESPONSE:
            # The server reads COPY data now, and ignores Sync and Flush until its end.
            for entry in [e for e in self._inflight if e.sync_after_copy is head]:
                self._inflight.remove(entry)
        return None

    def _ready(self, body: bytes, head: Entry) -> None:
        self.txn_status = body[:1]
        if head.kind == k.QUERY:
            # A Query that failed part-way may have made some of its names, or not.
            self._settle(head.made, UNCERTAIN if head.error is not None else LIVE)
            self._complete(head)
        elif head.kind == k.FUNCTION:
            self._complete(head)
        if self._copy_from is head:
            self._copy_from = None
        if self.txn_status == b"I":
            self._portals.end_transaction()

    def _row_description(self, body: bytes, head: Entry) -> bytes | None:
        if head.kind == k.QUERY:
            head.plan = self._row_plan(head, body, None)
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
        if head.kind == k.OWN_DESCRIBE_P:
            following = self._inflight[0] if self._inflight else None
            if following is None or following.kind != k.EXECUTE or following.portal is not portal:
                DESYNCS.inc()
                raise SessionDesync("the gateway's Describe was not followed by its Execute")
            self._describe_rows(following, portal)

    def _on_error(self, body: bytes, head: Entry) -> bytes | None:
        head.error = m.field(m.parse_fields(body), "C")
        if head.refusal is not None:
            replacement: bytes | None = head.refusal
        else:
            replacement = self._server.scrub(c.ERROR_RESPONSE, body, self._statement_sql(head))
        if head.kind not in k.EXTENDED_KINDS:
            return replacement  # Query, FunctionCall, Sync: ReadyForQuery ends it
        self._inflight.popleft()
        for version in head.made:
            if version.name == "" and head.kind in (k.PARSE, k.BIND):
                version.previous = None  # a failed unnamed Parse or Bind drops the old one
        self._settle(head.made, DEAD)
        if head.kind == k.EXECUTE:
            self._complete(head)
        self._discard_to_sync()
        return replacement

    def _discard_to_sync(self) -> None:
        """After an error in an extended message the server skips every message up to Sync,
        a Query or FunctionCall among them: those get no answer, and make nothing."""
        inflight = self._inflight
        while inflight and inflight[0].kind != k.SYNC:
            skipped = inflight.popleft()
            self._settle(skipped.made, DEAD)
            if self._copy_from is skipped:
                self._copy_from = None
        if not inflight:
            self._skipping = True  # the client's Sync is still to come

    def _settle(self, made: tuple[Version, ...], state: int) -> None:
        for version in made:
            if version.state == PENDING:
                names = self._portals if isinstance(version, Portal) else self._statements
                names.settle(version, state)

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
        for entry in self._inflight:
            if entry.kind == k.SYNC or entry.kind == k.QUERY:
                break
            entry.muted = True
        if not any(entry.kind == k.SYNC for entry in self._inflight):
            self._skipping = True
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

    def _row_plan(self, entry: Entry, description: bytes, formats: tuple[int, ...] | None) -> Any:
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

    def _complete(self, entry: Entry) -> None:
        if entry.verdict is None or entry.refusal is not None:
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


def _the(version: Version | None, kind: type[Any]) -> Any:
    """`version` when it is a definition of `kind` the gateway is sure of, else None."""
    if version is None or version.state == UNCERTAIN or not isinstance(version, kind):
        return None
    return version

