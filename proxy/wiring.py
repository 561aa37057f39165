"""Build the proxy's injected interfaces from the broker's settings, store and recorder.

The data path calls ``proxy.hooks`` protocols; this module is where the broker's real
implementations are adapted to them (token check against the store, recording through the
buffered recorder, the credential source of each resource, policy and masking).
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import structlog

from broker.audit.logins import FailedLogins
from broker.config import ResourceSettings, Settings
from broker.credentials.base import Credential
from broker.credentials.manager import CredentialManager, build_manager
from broker.exceptions import CredentialError, CredentialSourceUnavailable, ExpiredToken, InvalidToken, StoreError
from broker.masking import Masker, MaskingConfig
from broker.policy import PolicyEngine
from broker.policy.model import Decision
from broker.store import Grant, SessionStart, SessionStats, Store
from broker.store.recorder import Recorder
from proxy.admission import Admission, SessionCaps
from proxy.egress import EgressLimits
from proxy.egress_ledger import AgentEgressLedger
from proxy.exceptions import ClientAuthFailed, UpstreamUnavailable
from proxy.hooks import DenyAllReviews, Resource, ReviewHook
from proxy.records import StatementEvent, Stats
from proxy.results import ResultLimits
from proxy.server import tls_context
from proxy.session import ProxyContext
from proxy.upstream import UpstreamCredential, UpstreamTarget

log = structlog.get_logger("jitgate.proxy")


class TokenStore(Protocol):
    """`Store.tokens` (`broker.store.tokens.TokenRepository`), as far as the proxy uses it."""

    async def verify_token(self, token: str, resource: str) -> Grant: ...


class StoreTokenVerifier:
    """Gateway tokens are checked against their stored hashes in the broker's store."""

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens

    async def verify(self, token: str, *, resource: str) -> Grant:
        try:
            return await self._tokens.verify_token(token, resource)
        except ExpiredToken as exc:
            raise ClientAuthFailed(
                "gateway token expired", hint="request a new one with `jitgate connect`", reason=exc.reason,
                token_id=exc.token_id,
            ) from None
        except InvalidToken as exc:
            # Say why (revoked, another resource, already used) but never echo the token.
            raise ClientAuthFailed(
                f"gateway token rejected: {exc.reason}", reason=exc.reason, token_id=exc.token_id
            ) from None
        except StoreError:
            raise UpstreamUnavailable("the gateway cannot check tokens right now") from None


class ManagedCredentials:
    """Adapts the broker's CredentialManager (static, Vault, local issuer) to the proxy.

    Broker errors become UpstreamUnavailable (08006) with the broker's safe message; the
    broker's Credential stays here, keyed by the UpstreamCredential handed to the session.
    """

    def __init__(self, manager: CredentialManager) -> None:
        self.manager = manager
        self._issued: dict[int, tuple[UpstreamCredential, Credential]] = {}

    async def acquire(self, *, resource: str, role: str, session_id: str) -> UpstreamCredential:
        try:
            credential = await self.manager.acquire(resource=resource, role=role, session_id=session_id)
        except CredentialSourceUnavailable as exc:
            raise UpstreamUnavailable(
                f"the gateway cannot obtain a database credential right now: {exc}", detail=exc.detail
            ) from None
        except CredentialError as exc:
            raise UpstreamUnavailable(
                f"the gateway cannot obtain a database credential: {exc}", detail=exc.detail
            ) from None
        upstream = UpstreamCredential(credential.username, credential.password, credential.lease_id)
        self._issued[id(upstream)] = (upstream, credential)
        return upstream

    async def release(self, credential: UpstreamCredential) -> None:
        entry = self._issued.pop(id(credential), None)
        if entry is not None:
            await self.manager.release(entry[1])


# A decision's string, by lookup: an Enum member's `.value` goes through a descriptor, twice
# the cost of this on every statement.
_DECISION_VALUES: dict[Decision, str] = {d: d.value for d in Decision}


class RecorderSink:
    """Adapts the broker's buffered Recorder to the proxy's SessionRecorder protocol; refused
    logins go to `FailedLogins`, a bounded queue of their own (a flood cannot evict statements)."""

    def __init__(self, recorder: Recorder, logins: FailedLogins | None = None) -> None:
        self._recorder = recorder
        self.logins = logins
        self._seq: dict[str, int] = {}
        # Monotonic clock readings from the machine are turned into wall-clock times.
        self._offset = time.time() - time.monotonic()

    @property
    def healthy(self) -> bool:
        return self._recorder.healthy

    @property
    def backlogged(self) -> bool:
        """The recorder is behind: the relay stops reading from clients until `caught_up()`."""
        return self._recorder.backlogged

    async def caught_up(self) -> None:
        await self._recorder.caught_up()

    async def session_started(self, start: SessionStart) -> str:
        try:
            session_id = await self._recorder.start_session(start)
        except StoreError:
            raise UpstreamUnavailable("the gateway cannot record sessions right now") from None
        self._seq[session_id] = 0
        return session_id

    def statement(self, session_id: str, event: object) -> None:
        assert isinstance(event, StatementEvent)
        seq = self._seq.get(session_id, 0) + 1
        self._seq[session_id] = seq
        verdict = event.verdict
        shadow = verdict.shadow_decision
        # A StatementRow (broker.store.records): the record's fields in order, started_at as
        # epoch seconds; the writer process makes the StatementRecord.
        self._recorder.record_row((
            session_id,
            seq,
            event.sql,
            _DECISION_VALUES[verdict.decision],
            event.started + self._offset,
            None,  # fingerprint
            verdict.rule,
            verdict.reason,
            _DECISION_VALUES[shadow] if shadow is not None else None,
            round(event.duration * 1000, 3) if event.rows is not None else None,
            event.rows,
            event.masked,
            event.error_sqlstate,
            event.results,
            event.approval_id,
        ))

    async def session_ended(self, session_id: str, *, reason: str, stats: object) -> None:
        self._seq.pop(session_id, None)
        totals = None
        if isinstance(stats, Stats):
            totals = SessionStats(
                statements=stats.statements,
                bytes_in=stats.bytes_from_client,
                bytes_out=stats.bytes_to_client,
            )
        await self._recorder.end_session(session_id, reason=reason, stats=totals)

    def login_failed(
        self, *, user: str | None, resource: str | None, client_addr: str, reason: str, token_id: str | None
    ) -> None:
        if self.logins is not None:
            self.logins.record(user=user, resource=resource, client_addr=client_addr, reason=reason,
                               token_id=token_id)


def build_resource(name: str, settings: ResourceSettings, *, connect_timeout: float = 10.0) -> Resource:
    """`connect_timeout`: proxy.connect_timeout_seconds, for connecting and logging in upstream."""
    up = settings.upstream
    target = UpstreamTarget(
        host=up.host,
        port=up.port,
        dbname=up.dbname,
        sslmode=up.sslmode,
        sslrootcert=str(up.sslrootcert) if up.sslrootcert else None,
        connect_timeout=connect_timeout,
    )
    engine = PolicyEngine.load(settings.policy)
    masker: Any = None
    # Shadow mode (observe) forwards everything unmasked and only records decisions.
    if engine.document.top.preset != "observe":
        masking = MaskingConfig.model_validate(settings.masking or {})
        if masking.enabled:
            masker = Masker(masking)
    limits = None
    if settings.record_results:
        limits = ResultLimits(
            max_rows=settings.record_results_max_rows, max_bytes=settings.record_results_max_bytes
        )
    egress = EgressLimits.of(**settings.egress.limits())
    return Resource(
        name=name, target=target, policy=engine.bind(name), masker=masker, record_results=limits, egress=egress,
        shadow=engine.document.top.preset == "observe",
        timeouts=engine.timeouts(name),
    )


def build_context(
    settings: Settings,
    store: Store,
    recorder: Recorder,
    *,
    review: ReviewHook | None = None,
    credentials: Any = None,
    logins: FailedLogins | None = None,
) -> ProxyContext:
    """The proxy's context. Like `recorder`, `logins` belongs to the caller, who closes it
    after the server (a queue made here when none is given is left to the process's end)."""
    proxy = settings.proxy
    tls = None
    if proxy.tls_cert_file and proxy.tls_key_file:
        tls = tls_context(proxy.tls_cert_file, proxy.tls_key_file)
    return ProxyContext(
        resources=_build_resources(settings),
        tokens=StoreTokenVerifier(store.tokens),
        credentials=credentials or ManagedCredentials(build_manager(settings, store.audit)),
        recorder=RecorderSink(recorder, logins or FailedLogins(store.audit)),
        review=review or DenyAllReviews(),
        tls=tls,
        require_tls_for_non_loopback=proxy.require_tls_for_non_loopback,
        max_message_bytes=proxy.max_message_bytes,
        revoked_tokens=store.tokens.revoked_token_ids,
        egress_ledger=AgentEgressLedger(store.egress),
        startup_timeout=proxy.startup_timeout_seconds,
        idle_timeout=proxy.idle_timeout_seconds,
        admission=Admission(
            store.slots,
            SessionCaps(
                per_agent=proxy.max_sessions_per_agent,
                per_token=proxy.max_sessions_per_token,
                lease_seconds=proxy.session_slot_lease_seconds,
            ),
        ),
    )


def _build_resources(settings: Settings) -> dict[str, Resource]:
    timeout = settings.proxy.connect_timeout_seconds
    return {name: build_resource(name, res, connect_timeout=timeout) for name, res in settings.resources.items()}


def reload_resources(ctx: ProxyContext, settings: Settings) -> list[str]:
    """Swap in the resources (policy, masking, upstream) of freshly loaded settings.

    Everything is built first, so a policy that does not load changes nothing (the caller
    reports the error). Live sessions pick up the new policy at their next statement (they
    look their resource up by name); new sessions get everything new. Nothing is dropped.
    """
    built = _build_resources(settings)
    resources = ctx.resources
    assert isinstance(resources, dict)
    for name in [n for n in resources if n not in built]:
        del resources[name]  # no new sessions; live ones keep the policy they had
    resources.update(built)
    return sorted(built)


__all__ = ["build_context", "build_resource", "reload_resources"]
