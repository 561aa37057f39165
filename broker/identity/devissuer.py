"""A built-in OIDC issuer for the demo and tests: discovery, JWKS, device flow, minting.

    dev = DevIssuer("http://127.0.0.1:8080/dev-issuer", audience="jitgate",
                    users={"alice": DevUser(groups=("dba",))})
    app.mount("/dev-issuer", dev.app())          # or serve dev.app() on its own
    token = dev.mint("alice")                    # for tests and the demo's info file

Endpoints (relative to the issuer URL): `/.well-known/openid-configuration`, `/jwks`,
`/device/code` (RFC 8628 device authorization), `/token` (device_code grant), and
`/device/approve` (the demo's stand-in for a login page: approves a user code as a configured
user). It signs with a fresh RSA key per process (RS256); it has no passwords, so never expose
it beyond a demo.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from jwt.algorithms import RSAAlgorithm

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_CODE_TTL = 600
POLL_INTERVAL = 1


@dataclass(frozen=True, slots=True)
class DevUser:
    groups: tuple[str, ...] = ()
    kind: Literal["person", "agent"] = "person"
    email: str | None = None


@dataclass(slots=True)
class _Pending:
    user_code: str
    expires_at: float
    user: str | None = None


@dataclass
class DevIssuer:
    issuer: str
    audience: str = "jitgate"
    users: dict[str, DevUser] = field(default_factory=dict)
    auto_approve_as: str | None = None  # demo: device codes are approved at once as this user
    _key: rsa.RSAPrivateKey = field(init=False, repr=False)
    kid: str = field(init=False)
    _pending: dict[str, _Pending] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.issuer = self.issuer.rstrip("/")
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex[:16]

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return {"keys": [jwk]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "token_endpoint": f"{self.issuer}/token",
            "device_authorization_endpoint": f"{self.issuer}/device/code",
            "grant_types_supported": [DEVICE_GRANT],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["sub", "email", "groups", "jitgate_kind"],
        }

    def mint(
        self,
        sub: str,
        groups: tuple[str, ...] | list[str] | None = None,
        aud: str | None = None,
        ttl: float = 3600,
        *,
        kind: Literal["person", "agent"] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A signed token for `sub`; groups and kind default to the configured user's."""
        user = self.users.get(sub, DevUser())
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": aud or self.audience,
            "iat": now,
            "nbf": now,
            "exp": now + int(ttl),
            "groups": list(groups if groups is not None else user.groups),
            "jitgate_kind": kind or user.kind,
        }
        if user.email:
            claims["email"] = user.email
        claims.update(extra or {})
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def router(self) -> APIRouter:
        router = APIRouter(tags=["dev-issuer"], include_in_schema=False)
        router.add_api_route("/.well-known/openid-configuration", self.discovery, methods=["GET"])
        router.add_api_route("/jwks", self.jwks, methods=["GET"])
        router.add_api_route("/device/code", self._device_code, methods=["POST"])
        router.add_api_route("/device/approve", self._approve, methods=["POST"])
        router.add_api_route("/token", self._token, methods=["POST"])
        return router

    def app(self) -> FastAPI:
        app = FastAPI(title="jitgate dev OIDC issuer", openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(self.router())
        return app

    async def _device_code(self) -> dict[str, Any]:
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        pending = _Pending(user_code=user_code, expires_at=time.time() + DEVICE_CODE_TTL)
        if self.auto_approve_as:
            pending.user = self.auto_approve_as
        self._pending[device_code] = pending
        page = f"{self.issuer}/device/approve"
        return {
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": page,
            "verification_uri_complete": f"{page}?user_code={user_code}",
            "expires_in": DEVICE_CODE_TTL,
            "interval": POLL_INTERVAL,
        }

    async def _approve(self, request: Request) -> dict[str, str]:
        form = await _form(request)
        user_code, user = form.get("user_code", ""), form.get("user", "")
        if user not in self.users:
            raise HTTPException(404, "unknown demo user")
        for pending in self._pending.values():
            if secrets.compare_digest(pending.user_code, user_code) and time.time() < pending.expires_at:
                pending.user = user
                return {"status": "approved"}
        raise HTTPException(404, "unknown or expired user code")

    async def _token(self, request: Request) -> JSONResponse:
        form = await _form(request)
        grant_type, device_code = form.get("grant_type", ""), form.get("device_code", "")
        if grant_type != DEVICE_GRANT:
            return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)
        pending = self._pending.get(device_code)
        if pending is None or time.time() >= pending.expires_at:
            self._pending.pop(device_code, None)
            return JSONResponse({"error": "expired_token"}, status_code=400)
        if pending.user is None:
            return JSONResponse({"error": "authorization_pending"}, status_code=400)
        del self._pending[device_code]  # a device code is good for one token
        token = self.mint(pending.user)
        return JSONResponse(
            {"access_token": token, "id_token": token, "token_type": "Bearer", "expires_in": 3600}
        )


async def _form(request: Request) -> dict[str, str]:
    # OAuth endpoints take application/x-www-form-urlencoded; parsed here so that the dev
    # issuer does not need python-multipart.
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(body).items()}
