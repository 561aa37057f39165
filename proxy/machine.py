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

from proxy.answers import Answers
from proxy.egress import AgentBudget, EgressLimits, EgressMeter
from proxy.inflight import COPY_IN, Entry
from proxy.protocol.frames import DEFAULT_MAX_MESSAGE_BYTES
from proxy.records import Classifier, MaskerLike, Parked, StatementEvent, Stats
from proxy.requests import Requests
from proxy.results import ResultLimits
from proxy.server_messages import ServerMessages
from proxy.session_state import SessionState
from proxy.side_channel import Lookup


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
    ) -> None:
        self._state = SessionState()
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
        )
        self.held_client = False  # feed_server went on with client input held for a COPY
        self.out_upstream: list[bytes] = self._requests.out_upstream
        self.out_client: list[bytes] = self._answers.out

    # -- what the relay drives -----------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        self._requests.feed(data)

    def feed_server(self, data: bytes) -> None:
        self.held_client = False
        self._answers.feed(data)
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
        return len(self._state.inflight)

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
            and not state.open_extended and not self._requests.buffered
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
