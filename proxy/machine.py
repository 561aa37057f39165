"""The per-session relay state machine: policy on the way in, masking on the way out.

Sans-IO like the codec below it: ``feed_client`` and ``feed_server`` take bytes and leave
what must be written in ``out_upstream`` / ``out_client``; the asyncio layer
(``proxy.relay``) only moves bytes and runs the awaitable steps (approval waits, the side
channel's lookups).

The model. Every message that gets an answer is queued as an `Entry` (proxy.inflight) in the
order the server answers them. The client half (proxy.requests) judges each frontend message
(proxy.decide composes the verdict) and queues what it sends; the server half
(proxy.answers) routes each backend message to the entry at the head, which must accept it
in its current phase, or the session ends (FATAL 08P01: the gateway lost track of it).
Prepared statement and portal names are tracked as the server holds them, whether protocol
messages or SQL made them (proxy.names, in proxy.session_state). This class only composes
the halves and is what the relay sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from broker.masking import MaskingError
from broker.metrics import FAST_PATH
from broker.policy.model import Decision, Verdict
from proxy import fastpath as fp
from proxy import inflight as k
from proxy import rehearsal as rh
from proxy.answers import Answers
from proxy.egress import AgentBudget, EgressLimits, EgressMeter
from proxy.exceptions import ModeSwitched, SessionDesync
from proxy.inflight import COPY_IN, Entry
from proxy.names import LIVE
from proxy.protocol.frames import DEFAULT_MAX_MESSAGE_BYTES, ProtocolViolation
from proxy.protocol.messages import command_tag_rows, data_row, parse_data_row
from proxy.records import Classifier, MaskerLike, Parked, StatementEvent, Stats
from proxy.requests import Requests
from proxy.results import ResultLimits
from proxy.server_messages import ServerMessages
from proxy.session_state import SessionState
from proxy.side_channel import Lookup

#: The SQLSTATE recorded for a statement sent upstream whose answer never came (the session
#: ended first): connection failure, the outcome is unknown.
UNANSWERED = "08006"


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
        shadow: bool = False,
        unrecordable: Callable[[], Verdict | None] | None = None,
        fast_path: bool = True,
        policy_epoch: Callable[[], object] | None = None,
        current_resource: Callable[[], Any] | None = None,
    ) -> None:
        self._state = SessionState()
        self._clock = clock
        self._on_statement = on_statement
        self._unrecordable = unrecordable
        # The fast path (proxy.fastpath) for batches seen before: only where rows are relayed
        # as they come (no egress counting, no result recording) and verdicts are enforced
        # (not while observing, which a reload can turn on: `_reloaded`).
        self._fast_allowed = fast_path and egress is None and record_results is None
        self._fast = self._fast_allowed and not shadow
        self._templates: dict[bytes, fp.Template] = {}
        self._query_templates: dict[int, fp.Template] = {}  # by id() of the policy's verdict
        self.fast_batches = 0  # batches forwarded by the fast path (answered fast or not)
        self._pending: fp.Pending | None = None
        self._learning: tuple[fp.Shape | None, Entry, Verdict | None] | None = None
        self._classify_policy = classify
        # The policy `classify` asks now, as an object that changes when the policy is
        # replaced (a reload): a template whose verdict was confirmed under this very policy
        # is not judged again on the fast path (see `_forward_fast`). None: judged every time.
        self._policy_epoch = policy_epoch
        # The resource as the last reload left it (anything with `masker` and `shadow`, as
        # proxy.hooks.Resource), asked before each client read: another one's masking and
        # mode apply to what is sent from then on (see `_reloaded`). None: fixed.
        self._current_resource = current_resource
        self._resource_now: Any = None  # (so the first read takes the resource as it is then)
        self._masker = masker
        self._shadow = shadow
        # Egress limits cost one `is not None` per DataRow when off (proxy.egress).
        self._egress = EgressMeter(egress, on_egress_limit, resource) if egress is not None else None
        self._answers = Answers(
            self._state,
            masker=masker,
            server=ServerMessages(masker=masker, client_user=client_user, upstream_user=upstream_user),
            egress=self._egress,
            # Result recording wraps the row plan (proxy.results), so off costs nothing per row.
            record=record_results,
            on_statement=on_statement,
            clock=clock,
            max_message_bytes=max_message_bytes,
            shadow=shadow,
        )
        self._requests = Requests(
            self._state,
            self._answers,
            classify=classify,
            masker=masker,
            on_statement=on_statement,
            clock=clock,
            max_message_bytes=max_message_bytes,
            recording=record_results is not None,
            shadow=shadow,
            unrecordable=unrecordable,
        )
        self.held_client = False  # feed_server went on with client input held for a COPY
        self.out_upstream: list[bytes] = self._requests.out_upstream
        self.out_client: list[bytes] = self._answers.out

    # -- what the relay drives -----------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        if self._current_resource is not None and self._current_resource() is not self._resource_now:
            self._reloaded()
        if self._fast:
            self._learning = None  # (a batch is learned only when its answer comes before more input)
            if self._pending is not None:
                self.materialize()
            elif self.quiet:
                if data[:1] == b"Q":
                    sql = fp.query_text(data)
                    if sql is not None:
                        if self._query_fast(data, sql):
                            return
                        self._requests.feed(data)
                        self._learn_query(data, sql)
                        return
                found = fp.shape(data)
                if found is not None:
                    if self._forward_fast(data, found):
                        return
                    self._requests.feed(data)
                    self._learn(data, found)
                    return
        self._requests.feed(data)

    def _reloaded(self) -> None:
        """A reload replaced the resource: what the client sends from now on is decided, and
        its rows planned, with the new masker, in the new mode (observe or enforce).

        Entries already planned keep their plans (they were sent before); the plan cache and
        the fast path's templates, which hold plans, are forgotten, and a batch the fast path
        forwarded and has no answer for yet goes back to the full machine at once (below, in
        feed_client), to be planned again. Masking turned on or off, or observe turned on,
        is taken only when nothing is in flight: otherwise the session ends (`ModeSwitched`,
        FATAL 57P01) rather than relay what was sent under the other mode (without the
        Describe masking needs). Observe turned off ends the session in any case: what it
        made while observing (cursors declared, temporary functions and views, settings,
        prepared statements) was never judged, and enforcement would inherit it."""
        assert self._current_resource is not None
        resource = self._current_resource()
        masker, shadow = resource.masker, bool(resource.shadow)
        if self._shadow and not shadow:
            raise ModeSwitched(ModeSwitched.OBSERVE_ENDED)
        switched = (masker is None) != (self._masker is None) or shadow != self._shadow
        if switched and (
            self._state.inflight or self._pending is not None or not self._requests.settled or self._answers.buffered
        ):
            raise ModeSwitched()
        self._resource_now = resource
        self._masker = masker
        self._answers.use_masker(masker)
        self._requests.use_masker(masker)
        if shadow != self._shadow:
            self._shadow = shadow
            self._answers.use_shadow(shadow)
            self._requests.use_shadow(shadow)
            self._fast = self._fast_allowed and not shadow
        self._templates.clear()
        self._query_templates.clear()

    def feed_server(self, data: bytes) -> None:
        self.held_client = False
        pending = self._pending
        if pending is not None:
            if self._answered_fast(data, pending):
                return
            self.materialize()
        learning = self._learning
        self._answers.feed(data)
        if learning is not None:
            self._learning = None
            self._learned(data, learning)
        requests = self._requests
        if requests.probing is not None and requests.probing[0].done:
            requests.probed()
            self.held_client = True
        rehearsal = self._state.rehearsal
        if rehearsal is not None:
            rehearsal.count_held()
            if rehearsal.measured or rehearsal.finished:
                requests.rehearsal_answered()
                self.held_client = True
        if requests.draining and not self._state.inflight:
            requests.process()  # what the rehearsal waited for is answered
            self.held_client = True
        if requests.held_for_copy:
            copy = self._state.copy_from
            if copy is None or copy.phase == COPY_IN:
                requests.process()
                self.held_client = True

    # -- the fast path (proxy.fastpath) --------------------------------------------------------

    @property
    def quiet(self) -> bool:
        """Nothing in flight or held, no batch open, idle: the state a template was learned in."""
        state = self._state
        return (
            not state.inflight and state.txn_status == b"I" and not state.open_extended and not state.skipping
            and state.rehearsal is None and state.copy_from is None and not state.cursors
            and self._requests.settled and not self._answers.buffered
        )

    def _forward_fast(self, data: bytes, found: fp.Shape) -> bool:
        template = self._templates.get(found.key)
        if template is None:
            return False
        state = self._state
        statement = template.statement
        if (
            statement is None or statement.state != LIVE or state.statements.get(found.statement_name) is not statement
            or statement.verdict is not template.verdict or statement.approved_runs
            or statement.description is not template.description
            or state.portals.has(found.portal_name)
        ):
            return False
        # The policy returns what it returned when the template was learned (else it was
        # reloaded, or the recorder cannot record: its refusal), for a Parse's text and for a
        # statement parsed earlier alike (the full machine asks at each Bind, too).
        classified = template.classified if template.classified is not None else statement.classified
        if classified is not None:
            # Judged by the same policy object, the same text gets the same verdict: asked
            # once per policy (and again after a reload), not at every Bind; the recorder's
            # refusal, the other thing `classify` answers, is asked below every time.
            epoch = self._policy_epoch() if self._policy_epoch is not None else None
            if epoch is None or epoch is not template.confirmed:
                if self._classify_policy(statement.sql) is not classified:
                    return False
                template.confirmed = epoch
        if self._unrecordable is not None and self._unrecordable() is not None:
            return False  # the full machine refuses it
        self._forwarded(data, template, template.sql)
        return True

    def _forwarded(self, data: bytes, template: fp.Template, sql: str) -> None:
        self.fast_batches += 1
        self._pending = fp.Pending(data, template, self._clock(), sql)
        self._state.stats.bytes_from_client += len(data)
        self._requests.out_upstream.append(data)

    def _query_fast(self, data: bytes, sql: str) -> bool:
        if not self._query_templates:
            return False
        classified = self._classify_policy(sql)  # what the full machine asks first, too
        template = self._query_templates.get(id(classified))
        if template is None or template.classified is not classified:
            return False  # (the recorder's refusal, a reload: another verdict object)
        self._forwarded(data, template, sql)
        return True

    def _learn_query(self, data: bytes, sql: str) -> None:
        requests = self._requests
        out = requests.out_upstream
        inflight = self._state.inflight
        if (
            not out or out[-1] != data or requests.parked is not None or requests.waiting is not None
            or requests.probing is not None or len(inflight) != 1 or inflight[0].kind != k.QUERY
        ):
            return
        classified = requests.classified(sql)
        if classified is not None:
            self._learning = (None, inflight[0], classified)

    def _answered_fast(self, data: bytes, pending: fp.Pending) -> bool:
        if self._answers.buffered:
            return False
        template = pending.template
        answer = fp.answer_rows(data, template.answer_prefix)
        if answer is None:
            return False
        rows, rows_end, tag = answer
        if rows and not template.rows:
            return False
        masked = 0
        plan = template.plan
        relayed = data
        if plan is not None and rows:
            # The rows through the plan the full machine made for them (proxy.answers).
            parts: list[bytes] = []
            run = 0
            try:
                for i, start in enumerate(rows):
                    end = rows[i + 1] if i + 1 < len(rows) else rows_end
                    values, count = plan.mask_values(parse_data_row(data[start + 5 : end]))
                    if values is not None:
                        parts.append(data[run:start])
                        parts.append(data_row(values))
                        run = end
                        masked += count
            except (MaskingError, ProtocolViolation):
                return False  # the full machine refuses it, in its own words
            if parts:
                parts.append(data[run:])
                relayed = b"".join(parts)
        self._pending = None
        FAST_PATH.answered += 1
        state = self._state
        state.stats.bytes_to_client += len(data)
        self._answers.out.append(relayed)
        state.stats.statements += 1
        state.stats.masked += masked
        verdict = template.verdict
        counted = command_tag_rows(tag.decode("utf-8", "replace"))
        self._on_statement(
            StatementEvent(
                pending.sql, verdict, pending.started, self._clock() - pending.started,
                counted if counted is not None else len(rows), masked, None, None, approval_id=verdict.approval_id,
            )
        )
        return True

    def materialize(self) -> None:
        """The fast batch in flight goes through the full machine now, as it was forwarded:
        its answer is not the expected one, or the client sent more before it came."""
        pending = self._pending
        if pending is None:
            return
        self._pending = None
        FAST_PATH.fell_back += 1
        requests = self._requests
        sent = requests.replay_forwarded(pending.data, pending.sql, pending.template.classified, pending.started)
        self._state.stats.bytes_from_client -= len(pending.data)  # counted when it was forwarded
        if sent != pending.data or requests.buffered:
            raise SessionDesync("the gateway's model of a repeated batch is not what it forwarded")

    def _learn(self, data: bytes, found: fp.Shape) -> None:
        """The full machine took a batch of a known shape: keep it if it is one to repeat."""
        requests = self._requests
        out = requests.out_upstream
        if not out or out[-1] != data or requests.parked is not None or requests.waiting is not None:
            return
        inflight = self._state.inflight
        kinds = [entry.kind for entry in inflight]
        expected = [k.BIND, k.DESCRIBE_P, k.EXECUTE, k.SYNC] if found.described else [k.BIND, k.EXECUTE, k.SYNC]
        if kinds != ([k.PARSE, *expected] if found.parse else expected):
            return
        execute = inflight[-2]
        classified = None
        if found.parse:
            parsed = inflight[0].statement
            classified = requests.classified(parsed.sql) if parsed is not None else None
            if classified is None:
                return
        self._learning = (found, execute, classified)

    def _learned_query(self, data: bytes, entry: Entry, classified: Verdict | None) -> None:
        verdict = entry.verdict
        if (
            not self.quiet or verdict is None or classified is None or entry.error is not None
            or entry.capture is not None or entry.cut is not None or entry.made or entry.uses
            or not _repeatable(verdict) or verdict.statement_count != 1 or verdict.copy is not None
            or data[:1] != b"T"
        ):
            return
        size = int.from_bytes(data[1:5], "big")
        description = data[5 : 1 + size]
        prefix = fp.answer_prefix(False, description, query=True)
        if fp.answer_rows(data, prefix) is None:
            return
        plan = self._answers.row_plan(entry, description, None)
        if len(self._query_templates) >= fp.MAX_TEMPLATES:
            self._query_templates.clear()
        self._query_templates[id(classified)] = fp.Template(
            None, verdict, classified, None, entry.sql, "", "", prefix, plan
        )

    def _learned(self, data: bytes, learning: tuple[fp.Shape | None, Entry, Verdict | None]) -> None:
        found, execute, classified = learning
        if found is None:
            self._learned_query(data, execute, classified)
            return
        portal = execute.portal
        verdict = execute.verdict
        if (
            not self.quiet or portal is None or portal.statement is None or verdict is None
            or portal.description is None or execute.error is not None
            or execute.capture is not None or execute.cut is not None
        ):
            return
        statement = portal.statement
        if (
            verdict is not statement.verdict or not _repeatable(verdict) or statement.state != LIVE
            or statement.approved_runs or portal.covered or execute.made
        ):
            return
        prefix = fp.answer_prefix(found.parse, portal.description if found.described else None)
        if fp.answer_rows(data, prefix) is None:
            return  # not the plain answer (several reads, a notice...): not repeated fast
        if len(self._templates) >= fp.MAX_TEMPLATES:
            self._templates.clear()
        self._templates[found.key] = fp.Template(
            statement, verdict, classified, statement.description, statement.sql, found.statement_name,
            found.portal_name, prefix, execute.plan, bool(portal.description),
        )

    def abandon(self) -> int:
        """The session ended (the client left, its grant ended, the model broke) with
        statements sent upstream and not answered: the server may have run them, so each is
        recorded, its outcome unknown (SQLSTATE 08006, rows unknown). Returns how many."""
        pending = self._pending
        if pending is not None:
            try:
                self.materialize()
            except (SessionDesync, ProtocolViolation):
                self._pending = None
                self._record_unanswered(pending.sql, pending.template.verdict, pending.started)
                return 1
        count = 0
        rehearsal = self._state.rehearsal
        if rehearsal is not None:
            # A rehearsed unit runs in a transaction of its own; it is gone with the session,
            # unless the gateway had sent its COMMIT (a deferred check can hold that for as
            # long as another session likes): then its statements may be kept.
            if rehearsal.phase == rh.FINISHING and rehearsal.outcome == rh.KEEP and rehearsal.txn == b"I":
                for entry in rehearsal.completed:
                    if entry.verdict is not None:
                        self._record_unanswered(entry.sql, entry.verdict, entry.started, entry.masked)
                        count += 1
            self._state.inflight.clear()
            return count
        for entry in self._state.inflight:
            if (
                entry.kind in (k.QUERY, k.EXECUTE, k.FUNCTION) and entry.verdict is not None and entry.refusal is None
                and entry.own is None and entry.probe is None and entry.phase != k.DONE
            ):
                self._record_unanswered(entry.sql, entry.verdict, entry.started, entry.masked)
                count += 1
        self._state.inflight.clear()
        return count

    def _record_unanswered(self, sql: str, verdict: Verdict, started: float, masked: int = 0) -> None:
        self._state.stats.statements += 1
        self._on_statement(
            StatementEvent(
                sql, verdict, started, self._clock() - started, None, masked, UNANSWERED,
                approval_id=verdict.approval_id,
            )
        )

    def resume(
        self, *, approved: bool, reason: str | None = None, hint: str | None = None, approval_id: str | None = None
    ) -> bool:
        """Release the parked statement: run it, or refuse it with the reviewer's reason; its
        record carries `approval_id`. False: the server would skip it (an error earlier in its
        batch), so neither happens."""
        return self._requests.resume(approved=approved, reason=reason, hint=hint, approval_id=approval_id)

    def lookup_done(self, answer: Any) -> None:
        """The side channel's answer to `waiting` (None: it could not tell)."""
        self._requests.lookup_done(answer)

    def set_agent_budget(self, budget: AgentBudget | None) -> None:
        if self._egress is not None:
            self._egress.set_agent_budget(budget)

    # -- what the relay reads ------------------------------------------------------------------

    @property
    def parked(self) -> Parked | None:
        return self._requests.parked

    @property
    def waiting(self) -> Lookup | None:
        return self._requests.waiting

    @property
    def terminated(self) -> bool:
        return self._requests.terminated

    @property
    def txn_status(self) -> bytes:
        return self._state.txn_status

    @property
    def stats(self) -> Stats:
        return self._state.stats

    @property
    def in_flight(self) -> int:
        """Messages sent upstream and not yet answered in full."""
        return len(self._state.inflight) + (4 if self._pending is not None else 0)

    @property
    def _inflight(self) -> list[Entry]:  # for tests
        return list(self._state.inflight)

    @property
    def idle(self) -> bool:
        """Waiting for the client's next command outside a transaction: nothing in flight,
        parked or waiting, no extended-protocol batch left open, nothing of the client's
        unprocessed."""
        state = self._state
        return (
            state.txn_status == b"I" and not state.inflight and self.parked is None and self.waiting is None
            and not state.open_extended and not self._requests.buffered and self._pending is None
        )

    @property
    def buffered_client(self) -> int:
        """Bytes received from the client and not processed yet (e.g. while parked)."""
        return self._requests.buffered

    @property
    def egress_counts(self) -> tuple[int, int]:
        """Rows and bytes this session has returned to the client (counted under egress limits)."""
        meter = self._egress
        return (meter.session_rows, meter.session_bytes) if meter is not None else (0, 0)


def _repeatable(verdict: Verdict) -> bool:
    """A verdict the fast path may repeat: allowed as it is, and nothing the full machine does
    per run besides forwarding it (names made or dropped by SQL PREPARE, DEALLOCATE, DISCARD,
    DECLARE, CLOSE; EXECUTE/FETCH judged again; transactions; a rehearsal; an approval)."""
    return (
        verdict.decision is Decision.ALLOW and verdict.rehearse is None and verdict.approval_id is None
        and not (verdict.executes or verdict.fetches or verdict.prepares or verdict.deallocates)
        and not (verdict.closes or verdict.declares or verdict.transactions)
    )
