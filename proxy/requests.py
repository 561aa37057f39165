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
from proxy.answers import Answers
from proxy.decide import Context, decide, function_call_sql
from proxy.inflight import Entry, Probe
from proxy.names import Portal, Statement, Version
from proxy.protocol import codes as c
from proxy.protocol import messages as m
from proxy.protocol.frames import ProtocolViolation
from proxy.records import (
    BLOCKED_STMT,
    BLOCKED_TEXT,
    PROBE_STMT,
    UNAVAILABLE_RULES,
    Classifier,
    MaskerLike,
    Parked,
    StatementEvent,
    refusal_message,
)
from proxy.session_state import SessionState
from proxy.side_channel import FunctionName, Lookup, copy_columns_query

_U32 = struct.Struct("!I")
#: What may be parked or held needs the whole message.
_HELD = frozenset((c.QUERY, c.PARSE, c.EXECUTE, c.FUNCTION_CALL))


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
    ) -> None:
        self._s = state
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

    @property
    def buffered(self) -> int:
        return len(self._cbuf)

    def feed(self, data: bytes) -> None:
        self._cbuf += data
        self._s.stats.bytes_from_client += len(data)
        self._process_client()

    def process(self) -> None:
        """Go on with what the client sent (after the server answered a COPY)."""
        self._process_client()

    def _process_client(self) -> None:
        self.held_for_copy = False
        buf = self._cbuf
        n = len(buf)
        pos = 0
        run = 0  # start of a run of messages forwarded unchanged
        out = self.out_upstream
        unpack = _U32.unpack_from
        while n - pos >= 5 and self.parked is None and self.waiting is None and self.probing is None:
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
                # The server would skip it: it is not sent at all.
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
                self._s.open_extended = self._s.skipping = False
                pos = end
                continue
            body = bytes(buf[pos + 5 : end])
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
            return self._on_bind(m.parse_bind(body))
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
        return decide(self._classify(sql), Context(masker=self._masker, names=self._s, extended=extended))

    def _record_refusal(self, sql: str, verdict: Verdict) -> None:
        self._s.stats.statements += 1
        self._s.stats.blocked += 1
        sqlstate = "57P03" if verdict.rule in UNAVAILABLE_RULES else "42501"  # as refusal_message says
        self._on_statement(StatementEvent(sql, verdict, self._clock(), 0.0, None, 0, sqlstate))

    def _refuse(self, kind: int, sql: str, verdict: Verdict, reason: str | None = None) -> list[bytes]:
        """Refuse a Query or FunctionCall (`kind` QUERY), or an extended message (else)."""
        self._record_refusal(sql, verdict)
        refusal = refusal_message(verdict, denied_reason=reason)
        if kind == c.QUERY:
            self._s.inflight.append(Entry(k.REFUSED_QUERY, sql=sql, verdict=verdict, refusal=refusal))
            return [m.query_message(BLOCKED_TEXT)]
        self._s.open_extended = True
        self._s.skipping = True  # the server skips to Sync after the error; so does the gateway
        self._s.inflight.append(Entry(k.REFUSED, sql=sql, verdict=verdict, refusal=refusal))
        return [m.parse_message(BLOCKED_STMT, BLOCKED_TEXT)]

    # -- waiting: parked for review, or for the side channel ---------------------------------

    def resume(self, *, approved: bool, reason: str | None = None) -> None:
        """Release the parked statement: run it, or refuse it with the reviewer's reason."""
        parked = self.parked
        if parked is None:
            return
        self.parked = None
        kind = parked.kind
        if self._s.skipping:
            # An error earlier in its batch came in while it waited: the server would have
            # skipped it, so it is not sent at all (and nothing answers it).
            pass
        elif not approved:
            self.out_upstream.extend(self._refuse(kind, parked.sql, parked.verdict, reason))
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

    def lookup_done(self, answer: Any) -> None:
        """The side channel's answer to `waiting` (None: it could not tell)."""
        lookup, raw = self.waiting, self._held
        self.waiting = self._held = None
        if lookup is None or raw is None:
            return
        if self._s.skipping:
            pass  # skipped by the server, as above (resume)
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

    # -- simple query and function call -----------------------------------------------------

    def _on_query(self, sql: str, raw: bytes) -> list[bytes] | None:
        verdict = self._decide(sql)
        uses = self._s.take_uses()
        if verdict.decision is Decision.BLOCK:
            return self._refuse(c.QUERY, sql, verdict)
        if verdict.decision is Decision.REVIEW:
            return self._park(c.QUERY, sql, verdict, raw, uses)
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
        entry.made = self._s.sent(sql, verdict)
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
        self._forward_parse(parse, verdict)
        return None

    def _forward_parse(self, parse: m.Parse, verdict: Verdict) -> Statement:
        self._s.open_extended = True
        statement = self._s.statements.define(parse.name, Statement(name=parse.name, sql=parse.query, verdict=verdict))
        self._s.inflight.append(Entry(k.PARSE, statement=statement, made=(statement,)))
        return statement

    def _on_bind(self, bind: m.Bind) -> list[bytes] | None:
        statement = self._s.statement(bind.statement)
        if statement is None:
            reason = f"Bind to prepared statement {bind.statement!r} that the gateway cannot account for"
            if self._shadow:  # observe: forwarded (the server says whether it exists)
                self._s.inflight.append(Entry(k.BIND))
                return None
            verdict = Verdict(Decision.BLOCK, "gateway/unknown-prepared", reason)
            return self._refuse(c.BIND, f"<bind {bind.statement}>", verdict)
        # A statement that runs SQL EXECUTE or FETCH returns what the name means when it runs:
        # its portal is described then, never taken from a Describe of the statement.
        described = None if _by_name(statement.verdict) else statement.description
        portal = Portal(name=bind.portal, statement=statement, formats=bind.result_formats, description=described)
        self._s.portals.define(bind.portal, portal)
        self._s.inflight.append(Entry(k.BIND, portal=portal, made=(portal,), uses=(statement,)))
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
        if statement is None or statement.verdict is None:
            return self._forward_execute(name, raw, portal=portal)
        verdict = statement.verdict
        uses: tuple[Version, ...] = ()
        if _by_name(verdict) and portal.ran is not None:
            verdict = portal.ran  # a suspended portal goes on with the rows of its first run
        elif _by_name(verdict):
            # SQL EXECUTE s / FETCH c run what s and c are now, not what they were at Parse.
            verdict = self._decide(statement.sql, extended=True)
            uses = self._s.take_uses()
            if verdict.decision is Decision.BLOCK:
                return self._refuse(c.EXECUTE, statement.sql, verdict)
        if verdict.decision is Decision.REVIEW:
            # Every execution of a reviewed prepared statement needs an approval: the one
            # given for its Parse covers the first; later ones park again (and run at once
            # when an approval for the rest of the session covers them).
            # (For EXECUTE s, only while s is what it was when the approval was given.)
            if statement.approved_runs > 0 and verdict == statement.verdict:
                statement.approved_runs -= 1
            else:
                return self._park(c.EXECUTE, statement.sql, verdict, raw, uses)
        return self._forward_execute(name, raw, verdict, uses, portal=portal)

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
        if _by_name(statement.verdict if statement is not None else None) and portal.ran is None:
            portal.ran = verdict
        if statement is not None:
            entry.sql = statement.sql
            # A PREPARE, DECLARE, DEALLOCATE or CLOSE makes or drops names when it runs.
            entry.made = self._s.sent(statement.sql, verdict)
        else:
            entry.sql = f"<execute cursor {name}>"
            self._s.forget_cursors((name,))  # its query may reopen the others
        self._copy_from_starts(entry, verdict)
        if self._masker is None and self._record is None:
            self._s.inflight.append(entry)
            return None
        if portal.description is None:
            # Nobody described this portal yet: ask the upstream ourselves, so the masker
            # knows the columns before the first DataRow arrives.
            entry.phase = k.NO_ROWS
            self._s.inflight.append(Entry(k.OWN_DESCRIBE_P, portal=portal))
            self._s.inflight.append(entry)
            return [m.describe_message("P", name), raw]
        self._answers.describe_rows(entry, portal)
        self._s.inflight.append(entry)
        return None


def _by_name(verdict: Verdict | None) -> bool:
    """The statement runs SQL EXECUTE or FETCH: what it returns depends on names at run time."""
    return verdict is not None and bool(verdict.executes or verdict.fetches)
