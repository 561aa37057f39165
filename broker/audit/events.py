"""Audit events, built by pure constructors; the store stamps, chains and appends them.

An event is (type, actor, session_id, data). `data` holds JSON values only and never a
secret: no gateway token or its digest, no upstream username or password, no result
values (statements carry only counts of masked values). Types are dotted nouns and verbs,
stable, because exports and OCSF mapping key on them.

`EVENT_TYPES` names every type a record in the chain can have, with the constructor that
builds it (`None` for the one built elsewhere: `broker.audit.signing.checkpoint_event`);
the OCSF export is tested against one record of each.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, TypeVar

from broker.audit.chain import format_ts


@dataclass(frozen=True, slots=True)
class AuditEvent:
    type: str
    actor: str | None = None
    session_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


_F = TypeVar("_F", bound=Callable[..., "AuditEvent"])

#: Every audit record type, and the constructor here that builds it.
EVENT_TYPES: dict[str, Callable[..., AuditEvent] | None] = {"audit.checkpoint": None}


def _emits(*types: str) -> Callable[[_F], _F]:
    def register(constructor: _F) -> _F:
        for t in types:
            EVENT_TYPES[t] = constructor
        return constructor

    return register


def _value(v: object) -> Any:
    """An event field as a JSON value: enums by value, datetimes in the hashed form."""
    if isinstance(v, Enum):
        return v.value
    if isinstance(v, datetime):
        return format_ts(v)
    if isinstance(v, tuple | list):
        return [_value(x) for x in v]
    return v


def _data(**fields: object) -> dict[str, Any]:
    return {k: _value(v) for k, v in fields.items()}


def _owner(owner: str | None) -> dict[str, str]:
    """`owner` (an agent's person) only when there is one: a person's events stay as they were."""
    return {"owner": owner} if owner else {}


# -- identity and grants --------------------------------------------------------------------


@_emits("auth.login")
def login(*, principal: str, method: str, groups: Iterable[str] = (), ok: bool = True,
          client_addr: str | None = None, reason: str | None = None) -> AuditEvent:
    return AuditEvent(
        "auth.login",
        principal,
        data=_data(method=method, groups=list(groups), ok=ok, client_addr=client_addr, reason=reason),
    )


@_emits("auth.token_exchange")
def token_exchange(*, principal: str, issuer: str, ok: bool = True, reason: str | None = None) -> AuditEvent:
    return AuditEvent("auth.token_exchange", principal, data=_data(issuer=issuer, ok=ok, reason=reason))


@_emits("auth.login_failed")
def login_failed(*, user: str | None, resource: str | None, client_addr: str | None, reason: str,
                 via: str = "proxy", token_id: str | None = None, suppressed: int = 0,
                 network: str | None = None, first_seen: datetime | None = None,
                 last_seen: datetime | None = None) -> AuditEvent:
    """A login the gateway refused: the user name the client claimed, from where, to which
    resource, and which check failed (`reason`: the `AuthError` label, or the gateway's own
    check such as `unknown_resource`, `tls_required`, `session_cap`). Never the token or a
    password, nor any part of one: only the id of a token that parsed and is known.
    A summary of a flood (`broker.audit.logins`) sets `suppressed`: how many failures alike
    but for the address inside `network` (a /24 or /64) this one record stands for, seen
    from `first_seen` to `last_seen`; `client_addr` is the first of them."""
    extra: dict[str, object] = {}
    if suppressed:
        extra = {"suppressed": suppressed, "network": network, "first_seen": first_seen, "last_seen": last_seen}
    return AuditEvent(
        "auth.login_failed",
        None,
        data=_data(user=user or None, resource=resource, client_addr=client_addr, reason=reason, via=via,
                   token_id=token_id, ok=False, **extra),
    )


@_emits("token.issue")
def token_issued(*, token_id: str, principal: str, groups: Iterable[str], resource: str, role: str,
                 expires_at: datetime, reusable: bool, owner: str | None = None) -> AuditEvent:
    """A gateway token was minted. The token and its digest stay out: only its id."""
    return AuditEvent(
        "token.issue",
        principal,
        data=_data(token_id=token_id, groups=list(groups), resource=resource, role=role,
                   expires_at=expires_at, reusable=reusable, **_owner(owner)),
    )


@_emits("token.revoke")
def token_revoked(*, token_id: str, actor: str | None = None) -> AuditEvent:
    return AuditEvent("token.revoke", actor, data=_data(token_id=token_id))


@_emits("access.request")
def access_requested(*, request_id: str, principal: str, resource: str, role: str, reason: str,
                     ttl_seconds: float | None = None, status: str | None = None) -> AuditEvent:
    """`status` is the request's outcome as recorded: granted, pending or denied."""
    return AuditEvent(
        "access.request",
        principal,
        data=_data(request_id=request_id, resource=resource, role=role, reason=reason, ttl_seconds=ttl_seconds,
                   status=status),
    )


@_emits("approval.request")
def approval_requested(*, approval_id: str, kind: str, requester: str, resource: str, approvers: Iterable[str],
                       quorum: int, expires_at: datetime, session_id: str | None = None, sql: str | None = None,
                       rule: str | None = None, role: str | None = None, owner: str | None = None) -> AuditEvent:
    """A request entered `pending`: a parked statement (with its text) or an access request."""
    return AuditEvent(
        "approval.request", requester, session_id,
        _data(approval_id=approval_id, kind=kind, resource=resource, approvers=list(approvers), quorum=quorum,
              expires_at=expires_at, sql=sql, rule=rule, role=role, owner=owner),
    )


@_emits("approval.vote")
def approval_vote(*, approval_id: str, approver: str, approve: bool, reason: str | None = None,
                  session_id: str | None = None, scope: str | None = None, break_glass: bool = False,
                  via: str | None = None) -> AuditEvent:
    return AuditEvent(
        "approval.vote", approver, session_id,
        _data(approval_id=approval_id, approve=approve, reason=reason, scope=scope, break_glass=break_glass,
              via=via),
    )


@_emits("approval.decide")
def approval_decided(*, approval_id: str, status: str, actor: str | None, reason: str | None = None,
                     decided_by: Iterable[str] = (), scope: str | None = None,
                     session_id: str | None = None) -> AuditEvent:
    """A request left `pending`: approved, denied, expired or cancelled."""
    return AuditEvent(
        "approval.decide", actor, session_id,
        _data(approval_id=approval_id, status=status, reason=reason, decided_by=list(decided_by), scope=scope),
    )


@_emits("access.grant")
def access_granted(*, request_id: str, principal: str, resource: str, role: str, token_id: str | None) -> AuditEvent:
    return AuditEvent(
        "access.grant", principal, data=_data(request_id=request_id, resource=resource, role=role, token_id=token_id)
    )


# -- sessions and statements ----------------------------------------------------------------


@_emits("session.start")
def session_started(*, session_id: str, principal: str, groups: Iterable[str], resource: str, role: str,
                    token_id: str | None, client_addr: str | None, application_name: str | None,
                    intent: str | None, owner: str | None = None) -> AuditEvent:
    return AuditEvent(
        "session.start",
        principal,
        session_id,
        _data(groups=list(groups), resource=resource, role=role, token_id=token_id, client_addr=client_addr,
              application_name=application_name, intent=intent, **_owner(owner)),
    )


@_emits("session.end")
def session_ended(*, session_id: str, reason: str, statements: int | None = None, bytes_in: int | None = None,
                  bytes_out: int | None = None, resource: str | None = None) -> AuditEvent:
    return AuditEvent(
        "session.end",
        None,
        session_id,
        _data(reason=reason, resource=resource, statements=statements, bytes_in=bytes_in, bytes_out=bytes_out),
    )


@_emits("statement")
def statement(*, session_id: str, seq: int, sql: str, decision: object, started_at: datetime,
              principal: str | None = None, client_addr: str | None = None,
              fingerprint: str | None = None, rule: str | None = None, reason: str | None = None,
              shadow_decision: object = None, duration_ms: float | None = None, rows: int | None = None,
              masked_values: int = 0, error_sqlstate: str | None = None, intent: str | None = None,
              resource: str | None = None, approval_id: str | None = None,
              results_digest: str | None = None) -> AuditEvent:
    """A statement with its decision: everything replay and `sessions show` display of it
    (`broker.audit.coverage` compares the `statements` row with this). `sql` is the text as
    recorded (placeholders if so configured); `intent` is what the agent said its session is
    for; `approval_id` the approval it ran under or was refused by; `results_digest` the
    SHA-256 of the recorded (masked) results, never the values. Its record's `ts` is
    `started_at`, the event's own time."""
    return AuditEvent(
        "statement",
        principal,
        session_id,
        _data(client_addr=client_addr, resource=resource, seq=seq, sql=sql, fingerprint=fingerprint,
              decision=decision, rule=rule, reason=reason,
              shadow_decision=shadow_decision, started_at=started_at, duration_ms=duration_ms, rows=rows,
              masked_values=masked_values, error_sqlstate=error_sqlstate, intent=intent, approval_id=approval_id,
              results_digest=results_digest),
    )


# -- credentials and configuration ----------------------------------------------------------


@_emits("lease.issue", "lease.renew", "lease.revoke")
def lease(*, action: str, lease_id: str, resource: str, role: str, session_id: str | None = None,
          ttl_seconds: float | None = None) -> AuditEvent:
    """`action` is issue, renew or revoke. The lease id names the lease; it is not a credential."""
    if action not in ("issue", "renew", "revoke"):
        raise ValueError(f"unknown lease action {action!r}")
    return AuditEvent(
        f"lease.{action}",
        None,
        session_id,
        _data(lease_id=lease_id, resource=resource, role=role, ttl_seconds=ttl_seconds),
    )


@_emits("config.change")
def config_changed(*, actor: str | None, what: str, detail: dict[str, Any] | None = None) -> AuditEvent:
    return AuditEvent("config.change", actor, data=_data(what=what, detail=detail or {}))


@_emits("policy.reload")
def policy_reloaded(*, resource: str | None, source: str, ok: bool = True, error: str | None = None) -> AuditEvent:
    return AuditEvent("policy.reload", None, data=_data(resource=resource, source=source, ok=ok, error=error))


@_emits("audit.prune")
def audit_pruned(*, archive: str, through_seq: int, through_hash: str, records: int,
                 sessions: Iterable[str] | None = None) -> AuditEvent:
    """`sessions`: every session archived so far (sorted), with `sessions_sha256`, the digest
    the archive trailer carries (`broker.audit.coverage.PruneEvidence` reads them)."""
    extra: dict[str, Any] = {}
    if sessions is not None:
        from broker.audit.archive import sessions_digest

        listed = sorted(sessions)
        extra = {"sessions": listed, "sessions_sha256": sessions_digest(listed)}
    return AuditEvent(
        "audit.prune", None, data=_data(archive=archive, through_seq=through_seq, through_hash=through_hash,
                                         records=records, **extra)
    )
