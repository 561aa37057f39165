"""Bearer authentication for /v1/*.

For now the accepted bearer tokens are configured as SHA-256 digests (`api.tokens`), so the
configuration file holds nothing that can be replayed. The presented token is hashed and
compared with every digest in constant time. No digests configured: every request is
refused (fail closed). OIDC bearer tokens will be accepted here too, later.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from broker.config import Settings

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


def token_matches(token: str, digests: list[str]) -> bool:
    presented = hashlib.sha256(token.encode()).hexdigest()
    matched = False
    for digest in digests:  # no early exit: the time taken does not depend on which matched
        matched |= hmac.compare_digest(presented, digest)
    return matched


async def require_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    settings: Settings = request.app.state.settings
    if credentials is None or not token_matches(credentials.credentials, settings.api.tokens):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or invalid bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return Caller(principal="api-token")


CallerDep = Annotated[Caller, Depends(require_caller)]
