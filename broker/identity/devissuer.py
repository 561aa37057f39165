"""A built-in OIDC issuer for the demo and tests: discovery, JWKS, device flow, minting.

    dev = DevIssuer("http://127.0.0.1:8080/dev-issuer", audience="jitgate",
                    users={"alice": DevUser(groups=("dba",))})
    app.mount("/dev-issuer", dev.app())          # or serve dev.app() on its own
    token = dev.mint("alice")                    # for tests and the demo's info file

Endpoints (relative to the issuer URL): `/.well-known/openid-configuration`, `/jwks`,
`/device/code` (RFC 8628 device authorization), `/token` (device_code grant), and
`/device/approve` (the demo's stand-in for a login page: approves a user code as a configured
user), and a browser flow: `/authorize` (authorization code with PKCE S256; the page asks which
demo user to be) redeemed at `/token` (grant `authorization_code`). A redirect URI must share the
issuer's scheme and host:port unless listed in `redirect_uris`. It signs with a fresh RSA key
per process (RS256); it has no passwords, so never expose it beyond a demo.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jwt.algorithms import RSAAlgorithm

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CODE_GRANT = "authorization_code"
DEVICE_CODE_TTL = 600
AUTH_CODE_TTL = 60
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


@dataclass(frozen=True, slots=True)
class _AuthCode:
    user: str
    client_id: str
    redirect_uri: str
    code_challenge: str
    nonce: str | None
    expires_at: float


_AUTHORIZE_PARAMS = ("client_id", "redirect_uri", "state", "nonce", "code_challenge", "code_challenge_method")


@dataclass
class DevIssuer:
    issuer: str
    audience: str = "jitgate"
    users: dict[str, DevUser] = field(default_factory=dict)
    auto_approve_as: str | None = None  # demo: device codes are approved at once as this user
    redirect_uris: tuple[str, ...] = ()  # besides those on the issuer's own scheme and host:port
    _key: rsa.RSAPrivateKey = field(init=False, repr=False)
    kid: str = field(init=False)
    _pending: dict[str, _Pending] = field(init=False, default_factory=dict, repr=False)
    _codes: dict[str, _AuthCode] = field(init=False, default_factory=dict, repr=False)

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
            "authorization_endpoint": f"{self.issuer}/authorize",
            "grant_types_supported": [DEVICE_GRANT, CODE_GRANT],
            "code_challenge_methods_supported": ["S256"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token"],
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
        router.add_api_route("/authorize", self._authorize_page, methods=["GET"])
        router.add_api_route("/authorize", self._authorize, methods=["POST"])
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

    def _check_authorize(self, params: dict[str, str]) -> None:
        # Errors before the redirect URI is trusted are shown here, never sent to it.
        redirect_uri = params.get("redirect_uri", "")
        ours = urlsplit(self.issuer)
        theirs = urlsplit(redirect_uri)
        same_origin = (theirs.scheme, theirs.netloc) == (ours.scheme, ours.netloc)
        if not (same_origin or redirect_uri in self.redirect_uris):
            raise HTTPException(400, "redirect_uri is not allowed by this issuer")
        if not params.get("client_id"):
            raise HTTPException(400, "client_id is required")
        if params.get("code_challenge_method") != "S256" or len(params.get("code_challenge", "")) < 43:
            raise HTTPException(400, "PKCE with code_challenge_method=S256 is required")

    async def _authorize_page(self, request: Request) -> HTMLResponse:
        params = {k: v for k, v in request.query_params.items() if k in _AUTHORIZE_PARAMS}
        if request.query_params.get("response_type") != "code":
            raise HTTPException(400, "response_type must be code")
        self._check_authorize(params)
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(v)}">' for k, v in params.items()
        )
        buttons = "".join(
            f'<button type="submit" name="user" value="{html.escape(name)}" data-user="{html.escape(name)}">'
            f"{html.escape(name)} ({html.escape(', '.join(user.groups) or 'no groups')})</button> "
            for name, user in self.users.items()
            if user.kind == "person"
        )
        return HTMLResponse(
            "<!doctype html><html><head><meta charset=utf-8><title>jitgate dev issuer</title></head><body>"
            "<h1>jitgate demo identity provider</h1><p>Sign in as a demo user (no password: demo only).</p>"
            f'<form method="post" action="{html.escape(self.issuer)}/authorize">{hidden}{buttons}</form>'
            "</body></html>"
        )

    async def _authorize(self, request: Request) -> RedirectResponse:
        form = await _form(request)
        self._check_authorize(form)
        user = form.get("user", "")
        if user not in self.users:
            raise HTTPException(404, "unknown demo user")
        code = secrets.token_urlsafe(32)
        self._codes[code] = _AuthCode(
            user=user, client_id=form["client_id"], redirect_uri=form["redirect_uri"],
            code_challenge=form["code_challenge"], nonce=form.get("nonce") or None,
            expires_at=time.time() + AUTH_CODE_TTL,
        )
        query = {"code": code, **({"state": form["state"]} if form.get("state") else {})}
        sep = "&" if "?" in form["redirect_uri"] else "?"
        return RedirectResponse(f"{form['redirect_uri']}{sep}{urlencode(query)}", status_code=303)

    def _redeem(self, form: dict[str, str]) -> JSONResponse:
        entry = self._codes.pop(form.get("code", ""), None)  # a code is good for one try
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if (
            entry is None
            or time.time() >= entry.expires_at
            or entry.redirect_uri != form.get("redirect_uri")
            or entry.client_id != form.get("client_id")
            or not secrets.compare_digest(challenge, entry.code_challenge)
        ):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        token = self.mint(entry.user, aud=entry.client_id, extra={"nonce": entry.nonce} if entry.nonce else None)
        return JSONResponse({"access_token": token, "id_token": token, "token_type": "Bearer", "expires_in": 3600})

    async def _token(self, request: Request) -> JSONResponse:
        form = await _form(request)
        grant_type, device_code = form.get("grant_type", ""), form.get("device_code", "")
        if grant_type == CODE_GRANT:
            return self._redeem(form)
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
