"""The store's parts as FastAPI dependencies: a route names the repository it reads or writes.

`create_app` keeps the open `Store` on `app.state.store`; routes (API and console) take one of
these instead, so each says what it touches.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from broker.store.access_requests import AccessRequestRepository
from broker.store.approvals import ApprovalRepository
from broker.store.audit import AuditRepository
from broker.store.sessions import SessionRepository
from broker.store.tokens import TokenRepository


def sessions_repo(request: Request) -> SessionRepository:
    repo: SessionRepository = request.app.state.store.sessions
    return repo


def audit_repo(request: Request) -> AuditRepository:
    repo: AuditRepository = request.app.state.store.audit
    return repo


def tokens_repo(request: Request) -> TokenRepository:
    repo: TokenRepository = request.app.state.store.tokens
    return repo


def access_repo(request: Request) -> AccessRequestRepository:
    repo: AccessRequestRepository = request.app.state.store.access
    return repo


def approvals_repo(request: Request) -> ApprovalRepository:
    repo: ApprovalRepository = request.app.state.store.approvals
    return repo


SessionsDep = Annotated[SessionRepository, Depends(sessions_repo)]
AuditDep = Annotated[AuditRepository, Depends(audit_repo)]
TokensDep = Annotated[TokenRepository, Depends(tokens_repo)]
AccessDep = Annotated[AccessRequestRepository, Depends(access_repo)]
ApprovalsRepoDep = Annotated[ApprovalRepository, Depends(approvals_repo)]
