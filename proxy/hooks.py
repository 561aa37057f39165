"""The interfaces the data path calls into; ``broker/`` provides the implementations.

The proxy never decides who someone is, what they may do, or where the credential comes
from: it asks these. Each is a structural Protocol so tests can pass small real objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from broker.policy import Verdict
from broker.store import Grant, SessionStart
from proxy.egress import EgressLimits
from proxy.rehearsal import BlastRadius
from proxy.results import ResultLimits
from proxy.upstream import UpstreamCredential, UpstreamTarget


@dataclass(slots=True)
class SessionInfo:
    session_id: str
    grant: Grant
    client_addr: str
    client_user: str
    application_name: str | None = None
    intent: str | None = None
    tls: bool = False
    extra: dict[str, str] = field(default_factory=dict)


class TokenVerifier(Protocol):
    async def verify(self, token: str, *, resource: str) -> Grant:
        """Return the grant, or raise proxy.exceptions.ClientAuthFailed."""
        ...


class CredentialProvider(Protocol):
    async def acquire(self, *, resource: str, role: str, session_id: str) -> UpstreamCredential:
        """A credential for one session; raise proxy.exceptions.UpstreamUnavailable if down."""
        ...

    async def release(self, credential: UpstreamCredential) -> None:
        """Called once when the session ends (revoke the lease)."""
        ...


class SessionRecorder(Protocol):
    async def session_started(self, start: SessionStart) -> str:
        """Record the start; returns the session id. Raising refuses the session."""
        ...

    @property
    def healthy(self) -> bool:
        """False when statements cannot be recorded: the proxy then refuses them."""
        ...

    def statement(self, session_id: str, event: object) -> None:
        """Non-blocking: buffered and written by a background task."""
        ...

    @property
    def backlogged(self) -> bool:
        """True while the recorder is behind: the relay stops reading the client meanwhile."""
        ...

    async def caught_up(self) -> None:
        """Return once the recorder has caught up (or cannot record at all)."""
        ...

    async def session_ended(self, session_id: str, *, reason: str, stats: object) -> None:
        """Never raises."""
        ...

    def login_failed(
        self, *, user: str | None, resource: str | None, client_addr: str, reason: str, token_id: str | None
    ) -> None:
        """A refused login (`reason`: the check that failed). Non-blocking, never raises."""
        ...


@dataclass(frozen=True, slots=True)
class ReviewOutcome:
    approved: bool
    reason: str | None = None
    hint: str | None = None  # not approved: how to go on, true to how the review ended
    # The approval it ran under or was refused by (recorded on the statement); None when no
    # approval was asked for (no workflow configured, or the review failed before asking).
    approval_id: str | None = None


class ReviewHook(Protocol):
    async def review(
        self,
        *,
        session: SessionInfo,
        sql: str,
        verdict: Verdict,
        notify: Callable[[str], None],
        estimate: int | None = None,
        blast_radius: BlastRadius | None = None,
    ) -> ReviewOutcome:
        """Park until a reviewer decides (or the wait expires). ``notify`` sends a
        NoticeResponse to the waiting client (e.g. "awaiting approval <id>"); ``estimate`` is
        the planner's row estimate for a write, when the gateway could EXPLAIN it;
        ``blast_radius`` the rows a write parked for its size changed in its rehearsal (or,
        marked estimated, the planner expects it to change)."""
        ...

    async def session_ended(self, session_id: str) -> None:
        """The session is gone: what it still has pending (a parked statement) is cancelled."""
        ...


class DenyAllReviews:
    """Until an approval workflow is configured, a statement under review is refused."""

    async def review(
        self,
        *,
        session: SessionInfo,
        sql: str,
        verdict: Verdict,
        notify: Callable[[str], None],
        estimate: int | None = None,
        blast_radius: BlastRadius | None = None,
    ) -> ReviewOutcome:
        return ReviewOutcome(
            approved=False,
            reason=f"{verdict.reason} (no approval workflow is configured on this gateway)",
            hint="This gateway cannot ask for approvals, so the statement cannot run as it is; send one the "
            "policy allows (see DETAIL), or ask the gateway's operator to configure approvals.",
        )

    async def session_ended(self, session_id: str) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Resource:
    """A database the proxy serves, as the data path needs it."""

    name: str
    target: UpstreamTarget
    policy: Callable[[str, Sequence[str]], Verdict]  # (sql, groups) -> verdict
    masker: object | None
    record_results: ResultLimits | None = None  # None: result rows are not recorded
    egress: EgressLimits | None = None  # None: no caps on returned rows/bytes
    shadow: bool = False  # the observe preset: forward everything, record what would have happened
    # Session timeouts (ms) sent in the upstream start-up packet, and their ceilings
    # (broker.policy.timeouts); empty: the gateway sets none.
    timeouts: Mapping[str, int] = field(default_factory=dict)
