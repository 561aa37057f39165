"""The client half of the relay machine: each frontend message judged, then forwarded,
substituted, parked for review or held for the side channel.

How a refused statement is answered. The message is *substituted* with one that makes the
upstream itself fail at that point (a Parse or Query of a fixed text that is a syntax
error); proxy.answers then replaces the upstream's ErrorResponse for it with the gateway's
own (42501, naming rule and reason). The upstream never sees the refused text, and the
transaction state the client is told is the one the upstream really has.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from broker.policy.model import Decision, Verdict
from proxy import inflight as k
from proxy import rehearsal as rh
from proxy.answers import Answers
from proxy.decide import Context, decide, function_call_sql
from proxy.inflight import Entry, Probe
from proxy.names import Portal, Statement, Version, key
from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.records import (
    BLOCKED_STMT,
    BLOCKED_TEXT,
    PROBE_STMT,
    Classifier,
    MaskerLike,
    Parked,
    StatementEvent,
    refusal_message,
)
from proxy.session_state import SessionState
from proxy.side_channel import FunctionName, Lookup, copy_columns_query

#: Returned by a message handler: the message stays in the buffer, unprocessed, until the
#: machine goes on (a rehearsal waits for its unit's Sync, or for what is in flight).
_HOLD: list[bytes] = []
#: In flight, these leave the transaction status the last ReadyForQuery's.
_QUIET = frozenset((k.PARSE, k.BIND, k.DESCRIBE_S, k.DESCRIBE_P, k.CLOSE))

_U32 = struct.Struct("!I")
#: What may be parked or held needs the whole message.
_HELD = frozenset((c.QUERY, c.PARSE, c.BIND, c.EXECUTE, c.FUNCTION_CALL))


class Requests:
    def __init__(
        self,
        state: SessionState,
        answers: Answers,
        *,
        classify: Classifier,
        masker: MaskerLike | None,
        on_statement: Callable[[StatementEvent], None],
        clock: Callable[[], float],
        max_message_bytes: int,
        recording: bool,
        shadow: bool,
        unrecordable: Callable[[], Verdict | None] | None = None,
    ) -> None:
        self._s = state
        # The refusal while what runs cannot be recorded (None: it can). The classifier says
        # so for every text it judges, prepared statements' at each Bind and Execute too; an
        # Execute asks here as well, for a DECLAREd cursor's, which no text judges again
        # (fail closed: not run, not unrecorded).
        self._unrecordable = unrecordable
        # A batch the fast path forwarded, processed now (proxy.fastpath): its text is judged
        # as it was then, and the recorder's health is what it was then.
        self.replay: tuple[str, Verdict | None] | None = None
        self._classified: Verdict | None = None  # what the policy returned to the last _decide
        self._classified_sql = ""
        self._answers = answers
        self._classify = classify
        self._masker = masker
        self._on_statement = on_statement
        self._clock = clock
        self._max = max_message_bytes
        self._record = recording or None
        self._shadow = shadow  # observe: forward what enforcement would refuse, and record that
        self._cbuf = bytearray()
        self.out_upstream: list[bytes] = []
        self.parked: Parked | None = None
        self.waiting: Lookup | None = None  # a side-channel question the client's next message waits for
        self._held: bytes | None = None  # that message
        self._function_names: dict[int, tuple[str, str, int]] = {}  # OID -> schema, name, result type
        self.terminated = False
        self.held_for_copy = False  # client input waits until the server answers a COPY FROM
        self.probing: tuple[Probe, bytes, Any] | None = None  # a COPY held for its probe's answer
        # Rehearsals (proxy.rehearsal): held until what is in flight is answered; the next
        # Query, Bind or Execute needs no rehearsal of its own (within the planner's estimate,
        # or approved); an approved unit runs as sent, to its Sync.
        self.draining = False
        self._flushed = False
        self._cleared_once = False
        self._approved_unit = False
        # The approval of the write released last (`resume`): what its messages run under when
        # they are processed again (cleared once, or an approved unit).
        self._approval: str | None = None
        self._estimating: tuple[int, str, Verdict, tuple[Version, ...], str] | None = None
        self._at = (0, 0)  # the Bind being handled: its start and end in the buffer
        # Portals covered until their batch's Sync: a later Execute of one runs outside the
        # unit that was counted (a Bind alone counts nothing), so it is judged again.
        self._covered: list[Portal] = []

    def use_shadow(self, shadow: bool) -> None:
        """Observe (forward and record what enforcement would refuse) or enforce from now on:
        statements and portals made before are judged again at their next Bind or Execute
        (`_judged_again` skips that only while observing)."""
        self._shadow = shadow

    def use_masker(self, masker: MaskerLike | None) -> None:
        """Decide with `masker` from now on (a reload changed the resource's masking)."""
        self._masker = masker

    @property
    def buffered(self) -> int:
        return len(self._cbuf)

    @property
    def settled(self) -> bool:
        """Nothing parked, waited for, held or carried over to the next message: what a Sync
        leaves behind once it is answered (the fast path's starting point, proxy.fastpath)."""
        return (
            self.parked is None and self.waiting is None and self.probing is None and not self._cbuf
            and not self.terminated and self.replay is None and not self.held_for_copy and not self.draining
            and not self._flushed and not self._cleared_once and not self._approved_unit and not self._covered
        )

    def classified(self, sql: str) -> Verdict | None:
        """What the policy returned for `sql` when it was last judged here (None: not `sql`)."""
        return self._classified if self._classified_sql == sql else None

    def replay_forwarded(self, data: bytes, sql: str, classified: Verdict | None, started: float) -> bytes:
        """Process `data`, already sent upstream by the fast path (proxy.fastpath), as it was
        then: `sql` judged `classified` as then, the recorder's health as then, `started` as its
        time. Returns what this would send upstream (not sent again: the caller compares)."""
        out = self.out_upstream
        mark = len(out)
        clock = self._clock
        self.replay = (sql, classified)
        self._clock = lambda: started
        try:
            self.feed(data)
        finally:
            self.replay = None
            self._clock = clock
        sent = b"".join(out[mark:])
        del out[mark:]
        return sent

    def feed(self, data: bytes) -> None:
        self._cbuf += data
        self._s.stats.bytes_from_client += len(data)
        self._process_client()

    def process(self) -> None:
        """Go on with what the client sent (after the server answered a COPY)."""
        self._process_client()

    def _process_client(self) -> None:
        self.held_for_copy = False
        self.draining = False
        if self._flushed and not self._s.inflight:
            self._flushed = False
        buf = self._cbuf
        n = len(buf)
        pos = 0
        run = 0  # start of a run of messages forwarded unchanged
        out = self.out_upstream
        unpack = _U32.unpack_from
        state = self._s
        try:
            while (
                n - pos >= 5 and self.parked is None and self.waiting is None and self.probing is None
                and (state.rehearsal is None or state.rehearsal.phase == rh.COLLECTING)
            ):
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
                if self._s.skipping and kind != c.SYNC and kind != c.TERMINATE:
                    # The server would skip it: it is not sent at all (nor is it cleared to run).
                    self._cleared_once = False
                    if run < pos:
                        out.append(bytes(buf[run:pos]))
                    pos = run = end
                    continue
                if self._s.copy_from is not None and not self._in_copy(kind):
                    if self._s.copy_from.phase != k.COPY_IN:
                        # Whether the server is reading COPY data (and will eat this message) is
                        # not known until it answers the COPY: wait for that.
                        self.held_for_copy = True
                        break
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
                    entry.sync_after_copy = self._s.copy_from
                    self._s.inflight.append(entry)
                    self._s.open_extended = self._s.skipping = self._s.batch_ran = False
                    self._approved_unit = self._cleared_once = False
                    if self._covered:
                        for covered in self._covered:
                            covered.covered = False
                        self._covered.clear()
                    rehearsal = state.rehearsal
                    if rehearsal is not None and rehearsal.phase == rh.COLLECTING:
                        # The unit is complete: count what it changed (proxy.rehearsal).
                        out.append(bytes(buf[run:end]))
                        messages, entries = rehearsal.postamble()
                        self._s.inflight.extend(entries)
                        out.extend(messages)
                        rehearsal.phase = rh.RUNNING
                        run = end
                    pos = end
                    continue
                body = bytes(buf[pos + 5 : end])
                raw = bytes(buf[pos:end]) if kind in _HELD else b""
                if kind == c.BIND:
                    self._at = (pos, end)
                replacement = self._on_client_message(kind, body, raw)
                if replacement is _HOLD:
                    if self.draining and not self._flushed:
                        # The server sends what is pending only at Sync or Flush: ask for it
                        # (after what was forwarded before this message).
                        if run < pos:
                            out.append(bytes(buf[run:pos]))
                        run = pos
                        out.append(m.FLUSH)
                        self._flushed = True
                    break
                if replacement is not None:
                    if run < pos:
                        out.append(bytes(buf[run:pos]))
                    out.extend(replacement)
                    run = end
                pos = end
        except ProtocolViolation:
            # What came before the malformed message was judged and goes upstream, as a server
            # reading the same bytes runs it before it finds the fault (and it is recorded as
            # sent: SessionMachine.abandon). The session then ends.
            if run < pos:
                out.append(bytes(buf[run:pos]))
            raise
        if run < pos:
            out.append(bytes(buf[run:pos]))
        del buf[:pos]

    def _in_copy(self, kind: int) -> bool:
        """While a COPY FROM STDIN may be reading, the client sends its data, its end, and
        Sync/Flush (which the server ignores then: libpq sends them not knowing it was COPY)."""
        if kind == c.COPY_DONE or kind == c.COPY_FAIL:
            self._s.copy_from = None
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
        self._s.open_extended = True
        if kind == c.PARSE:
            return self._on_parse(m.parse_parse(body), raw)
        if kind == c.BIND:
            return self._on_bind(m.parse_bind(body), raw)
        if kind == c.EXECUTE:
            return self._on_execute(m.parse_execute(body)[0], raw)
        what, name = m.parse_describe_or_close(body)
        if kind == c.DESCRIBE:
            if what == "S":
                statement = self._s.statement(name)
                uses: tuple[Version, ...] = (statement,) if statement is not None else ()
                self._s.inflight.append(Entry(k.DESCRIBE_S, statement=statement, uses=uses))
            else:
                portal = self._s.portal(name)
                uses = (portal,) if portal is not None else ()
                self._s.inflight.append(Entry(k.DESCRIBE_P, portal=portal, uses=uses))
            return None
        # Close
        names = self._s.statements if what == "S" else self._s.portals
        self._s.inflight.append(Entry(k.CLOSE, made=(names.drop(name),)))
        return None

    # -- policy ---------------------------------------------------------------------------

    def _decide(self, sql: str, *, extended: bool = False) -> Verdict:
        self._s.take_uses()  # what the last decision looked up is not this one's
        replay = self.replay
        classified = replay[1] if replay is not None and replay[0] == sql and replay[1] is not None else None
        if classified is None:
            classified = self._classify(sql)
        self._classified, self._classified_sql = classified, sql
        if classified.executes:
            # SQL EXECUTE runs what the names hold: as the policy judges their text now.
            for name in classified.executes:
                statement = self._s.statement(name)
                if statement is not None:
                    self._judged_again(statement)
            self._s.take_uses()
        return decide(classified, Context(masker=self._masker, names=self._s, extended=extended))

    def _judged_again(self, statement: Statement) -> Verdict | None:
        """The verdict of a statement parsed earlier, as the policy judges its text now: None
        while that is what it was (the common case: one cache lookup); else the new one, which
        the statement holds from then on. Not for a batch replayed as it was forwarded
        (proxy.fastpath), nor in observe mode, nor for EXECUTE/FETCH (judged at each run)."""
        if statement.classified is None or self.replay is not None or self._shadow or rh.by_name(statement.verdict):
            return None
        classified = self._classify(statement.sql)
        if classified is statement.classified:
            return None
        if statement.prepared_as is None:
            verdict = decide(classified, Context(masker=self._masker, names=self._s, extended=True))
        else:
            # Made by SQL PREPARE: its text is the PREPARE statement; the name holds its inner one.
            outer = decide(classified, Context(masker=self._masker, names=self._s))
            name = key(statement.prepared_as)
            found = [inner for prepared, inner in outer.prepares if key(prepared) == name]
            verdict = found[-1] if found else Verdict(
                Decision.BLOCK, "gateway/unknown-prepared",
                f"prepared statement {statement.prepared_as!r} is not what its PREPARE makes now",
            )
        self._s.take_uses()
        statement.classified, statement.verdict = classified, verdict
        return verdict

    def _record_refusal(self, sql: str, verdict: Verdict, sqlstate: str) -> None:
        self._s.stats.statements += 1
        self._s.stats.blocked += 1
        self._on_statement(
            StatementEvent(sql, verdict, self._clock(), 0.0, None, 0, sqlstate, approval_id=verdict.approval_id)
        )

    def _refuse(
        self, kind: int, sql: str, verdict: Verdict, reason: str | None = None, hint: str | None = None
    ) -> list[bytes]:
        """Refuse a Query or FunctionCall (`kind` QUERY), or an extended message (else).

        The upstream gets `BLOCKED_TEXT` instead, a syntax error it answers in its own way
        (in a transaction block, the block fails), and its ErrorResponse is replaced by the
        refusal: the transaction state stays the server's."""
        refusal = refusal_message(verdict, denied_reason=reason, hint=hint, sql=sql)
        self._record_refusal(sql, verdict, m.field(m.parse_fields(refusal[5:]), "C") or "42501")
        if kind == c.QUERY:
            self._s.inflight.append(Entry(k.REFUSED_QUERY, sql=sql, verdict=verdict, refusal=refusal))
            return [m.query_message(BLOCKED_TEXT)]
        self._s.open_extended = True
        self._s.skipping = True  # the server skips to Sync after the error; so does the gateway
        self._s.inflight.append(Entry(k.REFUSED, sql=sql, verdict=verdict, refusal=refusal))
        return [m.parse_message(BLOCKED_STMT, BLOCKED_TEXT)]

    # -- waiting: parked for review, or for the side channel ---------------------------------

    def resume(
        self, *, approved: bool, reason: str | None = None, hint: str | None = None, approval_id: str | None = None
    ) -> bool:
        """Release the parked statement: run it, or refuse it with the reviewer's reason (and
        the review's hint on how to go on), recorded under `approval_id`. False: it does
        neither, because an error earlier in its batch made the server skip it."""
        parked = self.parked
        if parked is None:
            return False
        self.parked = None
        goes_on = not self._s.skipping
        if approval_id is not None:
            parked = replace(parked, verdict=replace(parked.verdict, approval_id=approval_id))
        self._approval = approval_id
        kind = parked.kind
        if parked.blast is not None:
            self._resume_write(parked, approved, reason, hint)
        elif self._s.skipping:
            # An error earlier in its batch came in while it waited: the server would have
            # skipped it, so it is not sent at all (and nothing answers it).
            pass
        elif not approved:
            self.out_upstream.extend(self._refuse(kind, parked.sql, parked.verdict, reason, hint))
        elif kind == c.QUERY:
            instead = self._forward_query(parked.sql, parked.verdict, parked.message, uses=parked.uses)
            self._send(instead, parked.message)
        elif kind == c.EXECUTE:
            name = m.parse_execute(parked.message[5:])[0]
            self._send(self._forward_execute(name, parked.message, parked.verdict, parked.uses), parked.message)
        else:
            statement = self._forward_parse(m.parse_parse(parked.message[5:]), parked.verdict)
            statement.approved_runs = 1
            self.out_upstream.append(parked.message)
        # The parked message was removed from the buffer when it was parked.
        self._process_client()
        return goes_on

    def _under_approval(self, verdict: Verdict) -> Verdict:
        """`verdict` of a write cleared once: under the approval that released it, if one did."""
        return verdict if self._approval is None else replace(verdict, approval_id=self._approval)

    def _resume_write(self, parked: Parked, approved: bool, reason: str | None, hint: str | None) -> None:
        """A write parked for its blast radius: its messages are processed again, as
        approved (it runs once, not rehearsed), or the first refused and the rest skipped."""
        if approved:
            if parked.unit:
                self._approved_unit = True
            else:
                self._cleared_once = True
            self._cbuf[:0] = parked.message
            return
        first = 1 + _U32.unpack_from(parked.message, 1)[0]
        self._cbuf[:0] = parked.message[first:]
        if not self._s.skipping:
            self.out_upstream.extend(self._refuse(parked.kind, parked.sql, parked.verdict, reason, hint))

    def lookup_done(self, answer: Any) -> None:
        """The side channel's answer to `waiting` (None: it could not tell)."""
        lookup, raw = self.waiting, self._held
        self.waiting = self._held = None
        if lookup is None or raw is None:
            return
        if self._s.skipping:
            self._estimating = None  # skipped by the server, as above (resume)
        elif isinstance(lookup, rh.Estimate):
            self._estimated(answer, raw)
        else:
            if answer is not None:
                self._function_names[lookup.oid] = answer
            self._send(self._decide_function_call(lookup.oid, raw), raw)
        self._process_client()

    def _send(self, instead: list[bytes] | None, raw: bytes) -> None:
        self.out_upstream.extend(instead if instead is not None else [raw])

    def _wait(self, lookup: Lookup, raw: bytes) -> list[bytes]:
        self.waiting = lookup
        self._held = raw
        return []

    def _park(self, kind: int, sql: str, verdict: Verdict, raw: bytes, uses: tuple[Version, ...] = ()) -> list[bytes]:
        self.parked = Parked(sql, verdict, raw, kind, uses=uses)
        return []

    # -- rehearsals: writes judged by the rows they change (proxy.rehearsal) ---------------

    def _rehearse_query(self, sql: str, verdict: Verdict, raw: bytes, uses: tuple[Version, ...]) -> list[bytes] | None:
        """Run an allowed unbounded write in a simple Query as a rehearsal, or say why not."""
        if verdict.transactions:
            return self._estimate(c.QUERY, sql, verdict, raw, uses, "it holds transaction control")
        if verdict.copy is not None:
            return self._estimate(c.QUERY, sql, verdict, raw, uses, "it holds a COPY")
        if self._s.open_extended:
            return self._estimate(c.QUERY, sql, verdict, raw, uses, "it came inside an extended-protocol batch")
        if self._s.inflight:
            return self._drain()
        if self._s.txn_status not in (b"I", b"T"):
            return self._forward_query(sql, verdict, raw, uses=uses)  # a failed transaction runs nothing
        rehearsal = rh.Rehearsal(self._s.txn_status, c.QUERY, sql, verdict, raw, uses=uses)
        opening, entries = rehearsal.preamble()
        self._s.inflight.extend(entries)
        self._s.rehearsal = rehearsal
        instead = self._forward_query(sql, verdict, raw, uses=uses)
        assert instead is None  # (no COPY: nothing to probe or refuse)
        closing, entries = rehearsal.postamble()
        self._s.inflight.extend(entries)
        rehearsal.phase = rh.RUNNING
        return [*opening, raw, *closing]

    def _rehearse_bind(self, statement: Statement, portal: str, raw: bytes) -> list[bytes] | None:
        """Start the unit of a Bind of an allowed unbounded write: None goes on with the Bind
        (rehearsed, or in a failed transaction), _HOLD waits, a list waits for an estimate."""
        verdict = statement.verdict
        assert verdict is not None
        if self._s.batch_ran:
            why = "another statement ran before it in its batch"
            return self._estimate(c.BIND, statement.sql, verdict, raw, (), why)
        start, end = self._at
        unit = rh.unit_end(self._cbuf, end, portal, self._s, max_message=self._max, decide=self._decide)
        if unit is None:
            return _HOLD  # its Sync is still to come
        if isinstance(unit, str):
            return self._estimate(c.BIND, statement.sql, verdict, raw, (), unit)
        if any(entry.kind not in _QUIET for entry in self._s.inflight):
            # (Parse, Describe, Close of this batch change no transaction status: their
            # answers are relayed as they come, the unit's held after them.)
            return self._drain()
        if self._s.txn_status not in (b"I", b"T"):
            return None
        rehearsal = rh.Rehearsal(self._s.txn_status, c.BIND, statement.sql, verdict, bytes(self._cbuf[start:unit]))
        rehearsal.opening, entries = rehearsal.preamble()
        self._s.inflight.extend(entries)
        self._s.rehearsal = rehearsal
        self._flushed = False
        return None

    def _drain(self) -> list[bytes]:
        """Hold the client's input until what is in flight is answered: the unit's status
        must be the last ReadyForQuery's. A Flush makes the server send pending answers."""
        self.draining = True
        return _HOLD

    def _estimate(
        self, kind: int, sql: str, verdict: Verdict, raw: bytes, uses: tuple[Version, ...], why: str
    ) -> list[bytes]:
        """A write that cannot be rehearsed: the planner's estimate decides (side channel)."""
        self._estimating = (kind, sql, verdict, uses, f"not rehearsed: {why}")
        return self._wait(rh.Estimate(sql, verdict.tables), raw)

    def _estimated(self, answer: Any, raw: bytes) -> None:
        assert self._estimating is not None
        kind, sql, verdict, uses, why = self._estimating
        self._estimating = None
        assert verdict.rehearse is not None
        blast = rh.estimated(answer, verdict.rehearse, why)
        if answer is not None and not blast.over:
            self._cbuf[:0] = raw  # processed again, as cleared (by the estimate, not approved)
            self._cleared_once = True
            self._approval = None
            return
        self.parked = Parked(sql, rh.review_verdict(verdict, blast), raw, kind, uses=uses, blast=blast)

    def rehearsal_answered(self) -> None:
        """The server answered a step of the rehearsal (proxy.machine calls this)."""
        rehearsal = self._s.rehearsal
        if rehearsal is None:
            return
        if rehearsal.phase == rh.RUNNING and rehearsal.measured:
            self._measured(rehearsal)
        if rehearsal.phase == rh.FINISHING and rehearsal.finished:
            self._finish(rehearsal)

    def _measured(self, rehearsal: rh.Rehearsal) -> None:
        """The unit ran and its rows are counted: keep it, or end it (proxy.rehearsal)."""
        counted = rehearsal.own_error is None or rehearsal.own_error_step == rh.MEASURE_AFTER
        if not rehearsal.began:
            rehearsal.outcome = rh.RELAY  # skipped after an error before it: nothing ran
        elif rehearsal.unit_failed and counted:
            rehearsal.outcome = rh.RELAY  # its own error, as PostgreSQL would answer it
        elif rehearsal.own_error is not None or rehearsal.unit_status is None:
            rehearsal.outcome = rh.FAIL  # the gateway's counting failed (a cancel hit it)
        else:
            limits = rehearsal.verdict.rehearse
            assert limits is not None
            blast = rehearsal.blast(limits)
            if rehearsal.not_counting:
                blast = rh.BlastRadius((), note="the server does not count writes (track_counts is off)")
            elif rehearsal.overflow:
                blast = rh.BlastRadius(blast.changes, note="its result is larger than the gateway holds")
            rehearsal.blast_radius = blast
            unknown = rehearsal.not_counting or rehearsal.overflow
            rehearsal.outcome = rh.PARK if blast.over or unknown else rh.KEEP
        keep = rehearsal.outcome == rh.KEEP
        if rehearsal.txn == b"I":
            end = self._s.txn_status != b"I"  # the gateway's transaction is still open
        else:
            # Inside the client's transaction: a failed unit leaves it failed, as on the server.
            end = rehearsal.outcome in (rh.KEEP, rh.PARK)
        if not end:
            self._finish(rehearsal)
            return
        messages, entries = rehearsal.ending(keep=keep)
        self._s.inflight.extend(entries)
        self.out_upstream.extend(messages)
        rehearsal.phase = rh.FINISHING

    def _finish(self, rehearsal: rh.Rehearsal) -> None:
        rehearsal.phase = rh.DONE
        self._s.rehearsal = None
        out = self._answers.out
        outcome = rehearsal.outcome
        if outcome == rh.PARK:
            out.extend(rh.asynchronous(rehearsal.held))  # notifications and settings still count
            blast = rehearsal.blast_radius
            assert blast is not None
            self.parked = Parked(
                rehearsal.sql, rh.review_verdict(rehearsal.verdict, blast), rehearsal.unit, rehearsal.kind,
                uses=rehearsal.uses, blast=blast, unit=rehearsal.kind == c.BIND,
            )
            return
        for entry in rehearsal.completed:
            self._answers.complete(entry)
        if outcome == rh.FAIL:
            out.extend(rh.asynchronous(rehearsal.held))
            assert rehearsal.own_error is not None
            out.append(rehearsal.own_error)
        else:
            out.extend(rehearsal.held)
            if rehearsal.final_error is not None:
                out.append(rehearsal.final_error)  # the COMMIT failed: a deferred constraint
        out.append(m.ready_for_query(self._s.txn_status))
        self._flushed = False
        self._process_client()

    # -- simple query and function call -----------------------------------------------------

    def _on_query(self, sql: str, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(sql)
        uses = self._s.take_uses()
        if verdict.decision is Decision.BLOCK:
            return self._refuse(c.QUERY, sql, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(c.QUERY, sql, verdict, raw, uses)
        if verdict.rehearse is not None and not self._shadow:
            if self._cleared_once:
                self._cleared_once = False
                verdict = self._under_approval(verdict)
            else:
                return self._rehearse_query(sql, verdict, raw, uses)
        return self._forward_query(sql, verdict, raw, uses=uses)

    def _forward_query(
        self, sql: str, verdict: Verdict, raw: bytes, *, columns: Any = None, uses: tuple[Version, ...] = ()
    ) -> list[bytes] | None:
        """Queue an allowed Query; None sends ``raw`` as is, a list is sent instead."""
        copy = verdict.copy
        if (
            columns is None and copy is not None and copy.direction == "to_stdout"
            and self._masker is not None and not copy.columns
        ):
            # The masker needs the COPY's columns, which COPY itself never describes.
            text = copy_columns_query(copy)
            if text is not None and not self._s.inflight and not self._s.open_extended:
                return self._probe(text, raw, (sql, verdict, uses))
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/copy-masking",
                "COPY TO STDOUT needs its column names for masking; list the columns explicitly",
            )
            return self._refuse(c.QUERY, sql, verdict)
        entry = Entry(k.QUERY, sql=sql, verdict=verdict, started=self._clock(), copy_columns=columns, uses=uses)
        # (what the policy returned for this very text, when that is known: a PREPARE in it
        # makes statements that are judged again, like protocol ones, after a reload)
        entry.made = self._s.sent(sql, verdict, self.classified(sql))
        self._copy_from_starts(entry, verdict)
        self._s.inflight.append(entry)
        return None

    def _probe(self, text: str, raw: bytes, held: tuple[str, Verdict, tuple[Version, ...]]) -> list[bytes]:
        """Describe the COPY's rows without running it (proxy.inflight.Probe)."""
        probe = Probe()
        for kind in (k.PARSE, k.DESCRIBE_S, k.CLOSE, k.SYNC):
            self._s.inflight.append(Entry(kind, probe=probe))
        self.probing = (probe, raw, held)
        return [m.parse_message(PROBE_STMT, text), m.describe_message("S", PROBE_STMT),
                m.close_message("S", PROBE_STMT), m.SYNC]

    def probed(self) -> None:
        """The probe is answered: send the COPY it held, or refuse it."""
        assert self.probing is not None
        probe, raw, (sql, verdict, uses) = self.probing
        self.probing = None
        if probe.failed or probe.columns is None:
            # What fails to describe fails to run the same way; the client is told why.
            verdict = Verdict(
                Decision.BLOCK,
                "gateway/copy-masking",
                "the columns of this COPY could not be determined for masking; list the columns explicitly",
            )
            self.out_upstream.extend(self._refuse(c.QUERY, sql, verdict))
        else:
            self._send(self._forward_query(sql, verdict, raw, columns=probe.columns, uses=uses), raw)
        self._process_client()

    def _copy_from_starts(self, entry: Entry, verdict: Verdict) -> None:
        if verdict.copy is not None and verdict.copy.direction == "from_stdin":
            self._s.copy_from = entry

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
            if self._shadow:  # observe: forwarded (the server says it does not exist), recorded as refused
                verdict = replace(verdict, decision=Decision.ALLOW, shadow_decision=Decision.BLOCK)
                self._s.inflight.append(Entry(k.FUNCTION, sql="<FunctionCall>", verdict=verdict, started=self._clock()))
                return None
            return self._refuse(c.QUERY, "<FunctionCall>", verdict)
        schema, function, result_type = name
        sql = function_call_sql(schema, function)
        verdict = self._decide(sql)
        if verdict.decision is not Decision.ALLOW:
            # Review of a fast-path call is refused too: there is no statement to re-run.
            return self._refuse(c.QUERY, sql, verdict)
        entry = Entry(k.FUNCTION, sql=sql, verdict=verdict, started=self._clock())
        # Its result is masked as `SELECT schema.function()`'s one column would be.
        result_format = int.from_bytes(raw[-2:], "big")
        entry.plan = self._answers.value_plan(function, result_type, result_format, verdict)
        self._s.forget_cursors()  # the function may open and close cursors by name
        self._s.inflight.append(entry)
        return None

    # -- extended query ----------------------------------------------------------------------

    def _on_parse(self, parse: m.Parse, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(parse.query, extended=True)
        if verdict.decision is Decision.BLOCK:
            return self._refuse(c.PARSE, parse.query, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(c.PARSE, parse.query, verdict, raw)
        self._forward_parse(parse, verdict).classified = self._classified
        return None

    def _forward_parse(self, parse: m.Parse, verdict: Verdict) -> Statement:
        self._s.open_extended = True
        statement = self._s.statements.define(parse.name, Statement(name=parse.name, sql=parse.query, verdict=verdict))
        self._s.inflight.append(Entry(k.PARSE, statement=statement, made=(statement,)))
        return statement

    def _on_bind(self, bind: m.Bind, raw: bytes) -> list[bytes] | None:
        statement = self._s.statement(bind.statement)
        if statement is None:
            reason = f"Bind to prepared statement {bind.statement!r} that the gateway cannot account for"
            if self._shadow:  # observe: forwarded (the server says whether it exists)
                self._s.inflight.append(Entry(k.BIND))
                return None
            refused = Verdict(Decision.BLOCK, "gateway/unknown-prepared", reason)
            return self._refuse(c.BIND, f"<bind {bind.statement}>", refused)
        self._judged_again(statement)
        if statement.verdict is not None and statement.verdict.decision is Decision.BLOCK:
            return self._refuse(c.BIND, statement.sql, statement.verdict)  # (judged so since its Parse)
        covered = False
        approval: str | None = None
        verdict = statement.verdict
        if verdict is not None and verdict.rehearse is not None and not self._shadow:
            # A write that needs its blast radius measured: its Bind starts the unit.
            rehearsal = self._s.rehearsal
            if rehearsal is not None or self._approved_unit:
                covered = True  # bound inside a rehearsed (or approved) unit
                approval = self._approval if self._approved_unit else None
            elif self._cleared_once:
                self._cleared_once, covered = False, True
                approval = self._approval
            elif verdict.decision is Decision.ALLOW:
                started = self._rehearse_bind(statement, bind.portal, raw)
                if started is not None:
                    return started
                covered = self._s.rehearsal is not None or self._s.txn_status == b"E"
        # A statement that runs SQL EXECUTE or FETCH returns what the name means when it runs:
        # its portal is described then, never taken from a Describe of the statement.
        described = None if rh.by_name(statement.verdict) else statement.description
        portal = Portal(name=bind.portal, statement=statement, formats=bind.result_formats, description=described)
        if covered:
            portal.covered = True
            portal.approval = approval
            self._covered.append(portal)
        self._s.portals.define(bind.portal, portal)
        self._s.inflight.append(Entry(k.BIND, portal=portal, made=(portal,), uses=(statement,)))
        rehearsal = self._s.rehearsal
        if rehearsal is not None and rehearsal.phase == rh.COLLECTING and rehearsal.first:
            rehearsal.first = False
            return [*rehearsal.opening, raw]
        return None

    def _on_execute(self, name: str, raw: bytes) -> list[bytes] | None:
        portal = self._s.portal(name)
        if portal is None:
            reason = f"Execute of portal {name!r} that the gateway cannot account for"
            verdict = Verdict(Decision.BLOCK, "gateway/unknown-portal", reason)
            if self._shadow:  # observe: forwarded unmasked, recorded with what would have happened
                verdict = replace(verdict, decision=Decision.ALLOW, shadow_decision=Decision.BLOCK)
                self._s.inflight.append(Entry(k.EXECUTE, sql=f"<execute {name}>", verdict=verdict, phase=k.ROWS))
                return None
            return self._refuse(c.EXECUTE, f"<execute {name}>", verdict)
        statement = portal.statement
        if self._unrecordable is not None and self.replay is None:
            refusal = self._unrecordable()
            if refusal is not None:
                return self._refuse(c.EXECUTE, statement.sql if statement is not None else f"<execute {name}>", refusal)
        if statement is None or statement.verdict is None:
            return self._forward_execute(name, raw, portal=portal)
        self._judged_again(statement)
        if statement.verdict.decision is Decision.BLOCK:
            return self._refuse(c.EXECUTE, statement.sql, statement.verdict)
        verdict = statement.verdict
        uses: tuple[Version, ...] = ()
        if rh.by_name(verdict) and portal.ran is not None:
            verdict = portal.ran  # a suspended portal goes on with the rows of its first run
        elif rh.by_name(verdict):
            # SQL EXECUTE s / FETCH c run what s and c are now, not what they were at Parse.
            verdict = self._decide(statement.sql, extended=True)
            uses = self._s.take_uses()
            if verdict.decision is Decision.BLOCK:
                return self._refuse(c.EXECUTE, statement.sql, verdict)
        if (
            verdict.decision is Decision.ALLOW and verdict.rehearse is not None and not portal.covered
            and not self._shadow and self._s.rehearsal is None and not self._approved_unit
        ):
            # Bound in an earlier batch (or before the unit could start): it cannot be
            # rehearsed alone, so the planner's estimate decides (proxy.rehearsal).
            if self._cleared_once:
                self._cleared_once = False
                verdict = self._under_approval(verdict)
            elif self._s.txn_status != b"E" or self._s.inflight:
                return self._estimate(c.EXECUTE, statement.sql, verdict, raw, uses, "bound in an earlier batch")
        if verdict.decision is Decision.REVIEW:
            # Every execution of a reviewed prepared statement needs an approval: the one
            # given for its Parse covers the first; later ones park again (and run at once
            # when an approval for the rest of the session covers them).
            # (For EXECUTE s, only while s is what it was when the approval was given.)
            if statement.approved_runs > 0 and verdict == statement.verdict:
                statement.approved_runs -= 1
            else:
                return self._park(c.EXECUTE, statement.sql, verdict, raw, uses)
        elif portal.approval is not None and verdict.approval_id is None:
            verdict = replace(verdict, approval_id=portal.approval)  # run inside an approved unit
        return self._forward_execute(name, raw, verdict, uses, portal=portal)

    def _describing(self, portal: Portal) -> Entry | None:
        """The client's Describe of `portal` in flight, not yet claimed by an Execute: the
        last entries only (a Describe, Execute pair is adjacent in every driver)."""
        inflight = self._s.inflight
        for i in range(len(inflight) - 1, max(len(inflight) - 4, -1), -1):
            entry = inflight[i]
            if entry.kind == k.DESCRIBE_P:
                return entry if entry.portal is portal and entry.then is None else None
            if entry.kind != k.BIND:
                return None
        return None

    def _forward_execute(
        self, name: str, raw: bytes, verdict: Verdict | None = None, uses: tuple[Version, ...] = (),
        *, portal: Portal | None = None,
    ) -> list[bytes] | None:
        if portal is None:  # (a parked Execute, released: looked up again)
            portal = self._s.portal(name)
        if portal is None:  # gone while the Execute was parked
            return self._on_execute(name, raw)
        statement = portal.statement
        if verdict is None and statement is not None:
            verdict = statement.verdict
        if verdict is None:  # a DECLAREd cursor: its rows are what it was declared for
            verdict = Verdict(Decision.ALLOW, "gateway/cursor", "rows of a declared cursor", lineage=portal.lineage)
        entry = Entry(k.EXECUTE, started=self._clock(), portal=portal, verdict=verdict, phase=k.ROWS)
        entry.uses = (portal, *uses)
        self._s.batch_ran = True
        if rh.by_name(statement.verdict if statement is not None else None) and portal.ran is None:
            portal.ran = verdict
        if statement is not None:
            entry.sql = statement.sql
            # A PREPARE, DECLARE, DEALLOCATE or CLOSE makes or drops names when it runs.
            entry.made = self._s.sent(statement.sql, verdict, statement.classified)
        else:
            entry.sql = f"<execute cursor {name}>"
            self._s.forget_cursors((name,))  # its query may reopen the others
        self._copy_from_starts(entry, verdict)
        if self._masker is None and self._record is None:
            self._s.inflight.append(entry)
            return None
        if portal.description is None:
            described = self._describing(portal) if self._s.rehearsal is None else None
            if described is not None:
                # The client asked for this portal's description earlier in the batch: its
                # answer comes before the rows, and gives their plan (proxy.answers).
                entry.phase = k.NO_ROWS
                described.then = entry
                self._s.inflight.append(entry)
                return None
            # Nobody described this portal yet: ask the upstream ourselves, so the masker
            # knows the columns before the first DataRow arrives.
            entry.phase = k.NO_ROWS
            self._s.inflight.append(Entry(k.OWN_DESCRIBE_P, portal=portal))
            self._s.inflight.append(entry)
            return [m.describe_message("P", name), raw]
        self._answers.describe_rows(entry, portal)
        self._s.inflight.append(entry)
        return None

