"""Bearer authentication for /v1/*.

For now the accepted bearer tokens are configured as SHA-256 digests (`api.tokens`), so the
configuration file holds nothing that can be replayed. The presented token is hashed and
compared with every digest in constant time. A bearer that is not one of those but looks
like a JWT is verified against the trusted OIDC issuers (`app.state.oidc`, see
`broker.identity.oidc`); the caller is then that principal. Neither: 401 (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.api.deps import ApprovalsRepoDep
from broker.config import Settings
from broker.identity.oidc import IdentityError, IssuerUnavailable, OIDCVerifier, Principal

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="An API token whose SHA-256 digest is listed in `api.tokens`.",
)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made an authenticated API request."""

    principal: str
    groups: tuple[str, ...] = ()
    identity: Principal | None = None  # set when the bearer was an OIDC token


def token_matches(token: str, digests: list[str]) -> bool:
    presented = hashlib.sha256(token.encode()).hexdigest()
    matched = False
    for digest in digests:  # no early exit: the time taken does not depend on which matched
        matched |= hmac.compare_digest(presented, digest)
    return matched


async def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    directory: ApprovalsRepoDep,
) -> Caller:
    settings: Settings = request.app.state.settings
    if credentials is not None and token_matches(credentials.credentials, settings.api.tokens):
        return Caller(principal="api-token")
    verifier: OIDCVerifier | None = getattr(request.app.state, "oidc", None)
    if credentials is not None and verifier is not None and credentials.credentials.count(".") == 2:
        try:
            identity = await verifier.verify(credentials.credentials)
        except IdentityError as exc:
            # The reason (expired, wrong audience, ...) tells the caller what to fix and
            # reveals nothing about the broker's keys or configuration.
            raise _unauthorized(f"invalid OIDC token: {exc}") from None
        except IssuerUnavailable:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "identity provider unavailable") from None
        # The directory: Slack approvers are matched to the groups of their last OIDC login.
        await directory.remember_principal(identity)
        return Caller(principal=identity.id, groups=identity.groups, identity=identity)
    raise _unauthorized("missing or invalid bearer token")


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


CallerDep = Annotated[Caller, Depends(require_caller)]
