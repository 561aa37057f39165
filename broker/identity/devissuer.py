"""A built-in OIDC issuer for the demo and tests: discovery, JWKS, device flow, minting.

    dev = DevIssuer("http://127.0.0.1:8080/dev-issuer", audience="jitgate",
                    users={"alice": DevUser(groups=("dba",))})
    app.mount("/dev-issuer", dev.app())          # or serve dev.app() on its own
    token = dev.mint("alice")                    # for tests and the demo's info file

Endpoints (relative to the issuer URL): `/.well-known/openid-configuration`, `/jwks`,
`/device/code` (RFC 8628 device authorization), `/token` (device_code grant), and
`/device/approve` (the demo's stand-in for a login page: GET shows a form, POST approves a user
code as a configured user), and a browser flow: `/authorize` (authorization code with PKCE S256;
the page asks which demo user to be) redeemed at `/token` (grant `authorization_code`). A
redirect URI must share the issuer's scheme and host:port unless listed in `redirect_uris`. It
signs with a fresh RSA key per process (RS256).

With `password` (the demo always sets one), both sign-in forms require it (field `password`,
compared in constant time): whoever lacks it gets 401 and nothing is approved or minted. The
demo prints it on the operator's terminal and keeps it in the operator's info file only, so an
agent that can reach the API cannot sign in as an approver. Without `password` anyone may sign
in as any configured user: tests only. Never expose it beyond a demo either way.

`/device/code` needs no authentication (RFC 8628), so what it stores is bounded: a device code
lives DEVICE_CODE_TTL seconds, every request to the issuer first drops expired device and
authorization codes, and at most `max_pending_device_codes` (MAX_PENDING_DEVICE_CODES) wait at
once; beyond that the endpoint answers 429 `slow_down` with a Retry-After until the oldest one
expires. The approve page names the client_id that asked for the code, and when.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from jwt.algorithms import RSAAlgorithm

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
CODE_GRANT = "authorization_code"
DEVICE_CODE_TTL = 600
AUTH_CODE_TTL = 60
POLL_INTERVAL = 1
MAX_PENDING_DEVICE_CODES = 1000
_CLIENT_ID_SHOWN = 200  # characters of a requester's client_id kept for the approve page


@dataclass(frozen=True, slots=True)
class DevUser:
    groups: tuple[str, ...] = ()
    kind: Literal["person", "agent"] = "person"
    email: str | None = None


@dataclass(slots=True)
class _Pending:
    user_code: str
    client_id: str
    asked_at: float
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
    password: str | None = field(default=None, repr=False)  # required by the sign-in forms when set
    max_pending_device_codes: int = MAX_PENDING_DEVICE_CODES
    clock: Callable[[], float] = field(default=time.time, repr=False)
    _key: rsa.RSAPrivateKey = field(init=False, repr=False)
    kid: str = field(init=False)
    _pending: dict[str, _Pending] = field(init=False, default_factory=dict, repr=False)
    _codes: dict[str, _AuthCode] = field(init=False, default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.password is not None and self.auto_approve_as:
            raise ValueError("auto_approve_as approves every device code without asking: it cannot be "
                             "combined with a password")
        if self.password == "":
            raise ValueError("password: empty; pass None for an issuer without a password (tests only)")
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
        now = int(time.time())  # real time even under a test clock: verifiers check it
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
        # Every request prunes first: nothing expired outlives the next request, polled or not.
        router = APIRouter(tags=["dev-issuer"], include_in_schema=False, dependencies=[Depends(self._prune)])
        router.add_api_route("/.well-known/openid-configuration", self.discovery, methods=["GET"])
        router.add_api_route("/jwks", self.jwks, methods=["GET"])
        router.add_api_route("/device/code", self._device_code, methods=["POST"])
        router.add_api_route("/device/approve", self._approve_page, methods=["GET"])
        router.add_api_route("/device/approve", self._approve, methods=["POST"])
        router.add_api_route("/authorize", self._authorize_page, methods=["GET"])
        router.add_api_route("/authorize", self._authorize, methods=["POST"])
        router.add_api_route("/token", self._token, methods=["POST"])
        return router

    def app(self) -> FastAPI:
        app = FastAPI(title="jitgate dev OIDC issuer", openapi_url=None, docs_url=None, redoc_url=None)
        app.include_router(self.router())
        return app

    def _prune(self) -> None:
        now = self.clock()
        for table in (self._pending, self._codes):
            for key in [key for key, entry in table.items() if entry.expires_at <= now]:
                del table[key]

    async def _device_code(self, request: Request) -> JSONResponse:
        now = self.clock()
        if len(self._pending) >= self.max_pending_device_codes:
            oldest = min(p.expires_at for p in self._pending.values())
            return JSONResponse(
                {"error": "slow_down",
                 "error_description": f"too many pending device codes ({len(self._pending)}, the dev "
                                      "issuer keeps at most max_pending_device_codes): retry once one "
                                      "is used or expires"},
                status_code=429, headers={"Retry-After": str(max(1, int(oldest - now + 0.999)))},
            )
        form = await _form(request)
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        pending = _Pending(user_code=user_code, client_id=form.get("client_id", "")[:_CLIENT_ID_SHOWN],
                           asked_at=now, expires_at=now + DEVICE_CODE_TTL)
        if self.auto_approve_as:
            pending.user = self.auto_approve_as
        self._pending[device_code] = pending
        page = f"{self.issuer}/device/approve"
        return JSONResponse({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": page,
            "verification_uri_complete": f"{page}?user_code={user_code}",
            "expires_in": DEVICE_CODE_TTL,
            "interval": POLL_INTERVAL,
        })

    def _check_password(self, form: dict[str, str]) -> None:
        """Raise 401 unless the form carries the demo password (when one is set)."""
        if self.password is None:
            return
        given = form.get("password", "").encode()
        if not secrets.compare_digest(given, self.password.encode()):
            raise HTTPException(401, "wrong or missing demo password: it is printed on the terminal that "
                                     "runs `jitgate demo` and kept in the operator's info file")

    def _password_field(self) -> str:
        if self.password is None:
            return "<p>Sign in as a demo user (no password: tests only).</p>"
        return ('<p><label>Demo password (printed by <code>jitgate demo</code>) '
                '<input type="password" name="password" required autocomplete="current-password"></label></p>')

    def _user_buttons(self) -> str:
        return "".join(
            f'<button type="submit" name="user" value="{html.escape(name)}" data-user="{html.escape(name)}">'
            f"{html.escape(name)} ({html.escape(', '.join(user.groups) or 'no groups')})</button> "
            for name, user in self.users.items()
            if user.kind == "person"
        )

    def _live_pending(self, user_code: str) -> _Pending | None:
        now = self.clock()
        for pending in self._pending.values():
            if secrets.compare_digest(pending.user_code, user_code) and now < pending.expires_at:
                return pending
        return None

    def _requester(self, user_code: str) -> str:
        """Who asked for `user_code`, so that nobody approves a request they did not make."""
        if not user_code:
            return ""
        pending = self._live_pending(user_code)
        if pending is None:
            return "<p>No pending request has this code: unknown or expired.</p>"
        client = (f"client <code>{html.escape(pending.client_id)}</code>" if pending.client_id
                  else "a client (no client_id given)")
        asked = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pending.asked_at))
        ago = int(self.clock() - pending.asked_at)
        return (f"<p>Requested by {client} at {asked} ({ago} s ago). Approve only a request you "
                "made yourself.</p>")

    async def _approve_page(self, request: Request) -> HTMLResponse:
        user_code = request.query_params.get("user_code", "")
        return HTMLResponse(
            "<!doctype html><html><head><meta charset=utf-8><title>jitgate dev issuer</title></head><body>"
            "<h1>jitgate demo identity provider</h1>"
            f"{self._requester(user_code)}"
            f'<form method="post" action="{html.escape(self.issuer)}/device/approve">'
            f'<p><label>Code <input name="user_code" value="{html.escape(user_code)}" required></label></p>'
            f"{self._password_field()}{self._user_buttons()}</form></body></html>"
        )

    async def _approve(self, request: Request) -> dict[str, str]:
        form = await _form(request)
        self._check_password(form)
        user_code, user = form.get("user_code", ""), form.get("user", "")
        if user not in self.users:
            raise HTTPException(404, "unknown demo user")
        pending = self._live_pending(user_code)
        if pending is None:
            raise HTTPException(404, "unknown or expired user code")
        pending.user = user
        return {"status": "approved"}

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
        return HTMLResponse(
            "<!doctype html><html><head><meta charset=utf-8><title>jitgate dev issuer</title></head><body>"
            "<h1>jitgate demo identity provider</h1>"
            f'<form method="post" action="{html.escape(self.issuer)}/authorize">{hidden}'
            f"{self._password_field()}{self._user_buttons()}</form></body></html>"
        )

    async def _authorize(self, request: Request) -> RedirectResponse:
        form = await _form(request)
        self._check_authorize(form)
        self._check_password(form)
        user = form.get("user", "")
        if user not in self.users:
            raise HTTPException(404, "unknown demo user")
        code = secrets.token_urlsafe(32)
        self._codes[code] = _AuthCode(
            user=user, client_id=form["client_id"], redirect_uri=form["redirect_uri"],
            code_challenge=form["code_challenge"], nonce=form.get("nonce") or None,
            expires_at=self.clock() + AUTH_CODE_TTL,
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
            or self.clock() >= entry.expires_at
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
        if pending is None or self.clock() >= pending.expires_at:
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
