"""Access requests, grants and token exchange.

    POST /v1/access-requests        {resource, role, reason, ttl}   bearer: an OIDC token
    GET  /v1/access-requests/{id}   the requester's own request (or any, with an API token)
    POST /v1/grants/{token_id}/revoke
    POST /v1/tokens/exchange        {subject_token, resource, role, reason, ttl}: an agent's
                                    workload JWT (e.g. a CI job's OIDC token) in the body
                                    instead of a bearer; answers like an access request

The gateway token's plaintext appears in the answer to the request that granted it, and
nowhere else: not in GET, not in logs.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field, field_validator

from broker.api.auth import CallerDep
from broker.api.deps import AccessDep, AuditDep, TokensDep
from broker.approvals.service import ApprovalService
from broker.audit import events
from broker.config import Settings
from broker.durations import parse_duration
from broker.identity.grants import NotCollectable, collect_grant, request_access
from broker.identity.oidc import IdentityError, IssuerUnavailable, OIDCVerifier, Principal
from broker.store.access_requests import AccessRequestInfo, AccessRequestRepository
from broker.store.tokens import TokenRepository

router = APIRouter(tags=["access"])

_DB_USER = re.compile(r"[^A-Za-z0-9_.@-]")


class AccessRequestIn(BaseModel):
    resource: str = Field(description="Resource name, as configured")
    role: str = Field(description="Database role wanted, e.g. readonly")
    reason: str = Field(description="Why access is needed; mandatory, recorded and shown to approvers")
    ttl: str | None = Field(default=None, description="Lifetime, e.g. 30m; default access.default_ttl")

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("a reason is required")
        return value[:2000]

    @field_validator("ttl")
    @classmethod
    def _ttl(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value


class ExchangeIn(AccessRequestIn):
    subject_token: str = Field(description="The workload's OIDC JWT", repr=False)


class AccessRequestOut(BaseModel):
    id: str
    status: Literal["pending", "approved", "granted", "denied", "expired", "cancelled"] = Field(
        description="approved: collect the token with POST /v1/access-requests/{id}/token"
    )
    principal: str
    resource: str
    role: str
    reason: str
    ttl_seconds: int
    reusable: bool
    approvers: list[str] = Field(description="Groups that may approve a pending request")
    token_id: str | None = Field(description="Id of the gateway token granted (not the token)")
    expires_at: datetime | None = Field(description="When the granted token expires")
    created_at: datetime
    decided_at: datetime | None
    token: str | None = Field(
        default=None, description="The gateway token: only in the response that granted it"
    )
    dsn: str | None = Field(default=None, description="Where to connect; the token is the password")

    @classmethod
    def of(cls, info: AccessRequestInfo) -> AccessRequestOut:
        return cls(
            id=info.id,
            status=info.status,  # type: ignore[arg-type]
            principal=info.principal,
            resource=info.resource,
            role=info.role,
            reason=info.reason,
            ttl_seconds=int(info.ttl.total_seconds()),
            reusable=info.reusable,
            approvers=list(info.approvers),
            token_id=info.token_id,
            expires_at=info.expires_at,
            created_at=info.created_at,
            decided_at=info.decided_at,
        )


class RevokeOut(BaseModel):
    token_id: str
    revoked: bool = Field(description="False when it was already revoked")


def gateway_dsn(settings: Settings, principal: Principal, resource: str) -> str:
    """A libpq URL without password: clients pass the gateway token as PGPASSWORD."""
    address = settings.access.gateway_address or f"{settings.proxy.listen_host}:{settings.proxy.listen_port}"
    user = _DB_USER.sub("_", principal.email or principal.subject)[:63] or "jitgate"
    return f"postgresql://{quote(user, safe='')}@{address}/{quote(resource, safe='')}"


async def _request_access(
    request: Request, principal: Principal, body: AccessRequestIn, *, tokens: TokenRepository,
    access: AccessRequestRepository,
) -> AccessRequestOut:
    settings: Settings = request.app.state.settings
    approvals: ApprovalService = request.app.state.approvals
    if body.resource not in settings.resources:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"unknown resource {body.resource[:63]!r}")
    ttl = parse_duration(body.ttl or settings.access.default_ttl)
    result = await request_access(
        settings, principal, tokens=tokens, access=access, resource=body.resource, role=body.role,
        reason=body.reason, ttl=ttl, approvals=approvals,
    )
    if result.decision.outcome == "deny":
        # Recorded all the same, so that refused requests show in the trail too.
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"{result.decision.reason} (request {result.request.id})"
        )
    out = AccessRequestOut.of(result.request)
    if result.token is not None:
        out.token = result.token
        out.dsn = gateway_dsn(settings, principal, body.resource)
    return out


@router.post(
    "/v1/access-requests",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    status_code=status.HTTP_201_CREATED,
    summary="Ask for a role on a resource; auto-granted (with a token) or pending approval",
    responses={403: {"description": "No access rule allows it"}, 404: {"description": "Unknown resource"}},
)
async def create_access_request(
    body: AccessRequestIn, caller: CallerDep, request: Request, tokens: TokensDep, access: AccessDep, audit: AuditDep
) -> AccessRequestOut:
    if caller.identity is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="access requests need an OIDC identity")
    # The broker sees an OIDC login (device flow, browser or a workload token) when the
    # identity is first used for something; the token itself stays out of the record.
    principal = caller.identity
    await audit.append_audit(
        events.login(principal=principal.id, method="oidc", groups=principal.groups, client_addr=_client(request))
    )
    return await _request_access(request, principal, body, tokens=tokens, access=access)


@router.get(
    "/v1/access-requests/{request_id}",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    summary="One access request (never includes the token)",
)
async def get_access_request(request_id: str, caller: CallerDep, access: AccessDep) -> AccessRequestOut:
    info = await access.get_access_request(request_id)
    # Someone else's request answers like a missing one: ids are not for enumerating.
    if info is None or (caller.identity is not None and info.principal != caller.principal):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="access request not found")
    return AccessRequestOut.of(info)


@router.post(
    "/v1/access-requests/{request_id}/token",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    summary="Collect the gateway token of an approved request (once, by its requester)",
    responses={409: {"description": "Not approved, or already collected"}},
)
async def collect_access_token(
    request_id: str, caller: CallerDep, request: Request, tokens: TokensDep, access: AccessDep
) -> AccessRequestOut:
    if caller.identity is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="only the requester collects a grant")
    try:
        result = await collect_grant(caller.identity, request_id, tokens=tokens, access=access)
    except NotCollectable as exc:
        code = status.HTTP_404_NOT_FOUND if "not found" in str(exc) else status.HTTP_409_CONFLICT
        raise HTTPException(code, detail=str(exc)) from None
    out = AccessRequestOut.of(result.request)
    out.token = result.token
    out.dsn = gateway_dsn(request.app.state.settings, caller.identity, result.request.resource)
    return out


@router.post("/v1/grants/{token_id}/revoke", response_model=RevokeOut, summary="Revoke a granted gateway token")
async def revoke_grant(token_id: str, caller: CallerDep, tokens: TokensDep, access: AccessDep) -> RevokeOut:
    owner = await access.token_owner(token_id)
    if owner is None or (caller.identity is not None and owner.principal != caller.principal):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="grant not found")
    return RevokeOut(token_id=token_id, revoked=await tokens.revoke_token(token_id))


@router.post(
    "/v1/tokens/exchange",
    response_model=AccessRequestOut,
    response_model_exclude_none=True,
    status_code=status.HTTP_201_CREATED,
    summary="Exchange a workload OIDC token for an access grant",
    responses={401: {"description": "The subject token was refused"}},
)
async def exchange(
    body: ExchangeIn, request: Request, tokens: TokensDep, access: AccessDep, audit: AuditDep
) -> AccessRequestOut:
    verifier: OIDCVerifier | None = request.app.state.oidc
    if verifier is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="no OIDC issuer is trusted")
    try:
        principal = await verifier.verify(body.subject_token)
    except IdentityError as exc:
        # A refused exchange is audited too, with the reason only: an unverified token's
        # claims are not evidence of who sent it.
        await audit.append_audit(
            events.token_exchange(principal="unverified", issuer="unverified", ok=False, reason=exc.reason)
        )
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail=f"invalid subject token: {exc}") from None
    except IssuerUnavailable:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="identity provider unavailable") from None
    await audit.append_audit(events.token_exchange(principal=principal.id, issuer=principal.issuer))
    return await _request_access(request, principal, body, tokens=tokens, access=access)


def _client(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


