"""Console login: OIDC authorization code flow with PKCE, then a signed session cookie.

    GET /console/login      state, nonce and PKCE verifier go into a short-lived signed cookie;
                            the browser is sent to the issuer's authorization endpoint
    GET /console/callback   state checked, code redeemed at the token endpoint (server to
                            server), the ID token verified like any API bearer
                            (`app.state.oidc`), its nonce checked; a session cookie is set
    POST /console/logout    the cookie is cleared

The session cookie holds only the verified identity (subject, issuer, email, kind, groups), the
expiry (the ID token's, capped by `console.session_ttl`) and the session's CSRF token, signed
with HMAC-SHA256 under a key from `console.cookie_key_file` (default
`<data_dir>/console-cookie.key`, created 0600). It is HttpOnly, SameSite=Lax, and Secure when the
console is reached over https. No token is kept in it or rendered into a page. The cookie is not
revocable before it expires except by rotating the key file: keep `session_ttl` short.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from broker.config import Settings
from broker.identity.oidc import IdentityError, IssuerUnavailable, OIDCVerifier, Principal

SESSION_COOKIE = "jitgate_console"
LOGIN_COOKIE = "jitgate_console_login"
LOGIN_TTL_SECONDS = 600
HTTP_TIMEOUT_SECONDS = 5.0


class LoginFailed(Exception):
    """The login could not complete; `str()` is safe to show to the person logging in."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    """Who is logged in to the console, as the verified ID token said at login."""

    principal: Principal
    expires_at: float
    csrf: str

    @property
    def id(self) -> str:
        return self.principal.id

    @property
    def groups(self) -> tuple[str, ...]:
        return self.principal.groups


def load_key(settings: Settings) -> bytes:
    """The cookie signing key: read from its file, or made once (0600) under data_dir."""
    path = settings.console.cookie_key_file or Path(settings.data_dir) / "console-cookie.key"
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_hex(32).encode()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
    if len(key) < 32:
        raise ValueError(f"{path}: the console cookie key must be at least 32 bytes")
    return key


class Signer:
    """`payload.signature`, both base64url: tamper-evident, not secret (holds nothing secret)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, purpose: str, body: bytes) -> bytes:
        return hmac.new(self._key, purpose.encode() + b"\0" + body, hashlib.sha256).digest()

    def dumps(self, purpose: str, data: dict[str, Any]) -> str:
        body = _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())
        return f"{body}.{_b64(self._mac(purpose, body.encode()))}"

    def loads(self, purpose: str, value: str | None) -> dict[str, Any] | None:
        """The data, or None when missing, malformed, forged or expired (`exp`)."""
        if not value or value.count(".") != 1:
            return None
        body, mac = value.split(".")
        try:
            if not hmac.compare_digest(_unb64(mac), self._mac(purpose, body.encode())):
                return None
            data = json.loads(_unb64(body))
        except (ValueError, json.JSONDecodeError):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int | float) or data["exp"] <= time.time():
            return None
        return data


def user_from_cookie(signer: Signer, value: str | None) -> ConsoleUser | None:
    data = signer.loads("session", value)
    if data is None:
        return None
    try:
        principal = Principal(
            subject=str(data["sub"]), issuer=str(data["iss"]), email=data.get("email"),
            groups=tuple(str(g) for g in data["groups"]), kind=data["kind"],
        )
        return ConsoleUser(principal=principal, expires_at=float(data["exp"]), csrf=str(data["csrf"]))
    except (KeyError, TypeError):
        return None


def session_cookie(signer: Signer, principal: Principal, expires_at: float) -> str:
    return signer.dumps("session", {
        "sub": principal.subject, "iss": principal.issuer, "email": principal.email, "kind": principal.kind,
        "groups": list(principal.groups), "exp": int(expires_at), "csrf": secrets.token_urlsafe(24),
    })


class OidcClient:
    """The console's side of the code flow against one issuer."""

    def __init__(self, settings: Settings, http: httpx.AsyncClient | None = None) -> None:
        issuers = settings.oidc.issuers
        wanted = settings.console.issuer
        conf = next((i for i in issuers if wanted is None or i.issuer.rstrip("/") == wanted.rstrip("/")), None)
        self.issuer = conf.issuer if conf else None
        audience = conf.audience if conf else None
        default_client = audience if isinstance(audience, str) else (audience[0] if audience else None)
        self.client_id = settings.console.client_id or (conf.client_id if conf else None) or default_client
        self.redirect_url = settings.console.redirect_url
        self.http = http or httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS)
        self._discovery: dict[str, Any] | None = None

    async def discovery(self) -> dict[str, Any]:
        if self.issuer is None or self.client_id is None:
            raise LoginFailed("no OIDC issuer is configured for the console (oidc.issuers)")
        if self._discovery is None:
            try:
                resp = await self.http.get(f"{self.issuer.rstrip('/')}/.well-known/openid-configuration")
                resp.raise_for_status()
                found = resp.json()
            except (httpx.HTTPError, ValueError):
                raise LoginFailed("the identity provider is unavailable") from None
            if not found.get("authorization_endpoint") or not found.get("token_endpoint"):
                raise LoginFailed("the identity provider offers no authorization code flow")
            self._discovery = found
        return self._discovery

    async def start(self, signer: Signer, redirect_url: str) -> tuple[str, str]:
        """(URL to send the browser to, value of the login cookie)."""
        conf = await self.discovery()
        state, nonce, verifier = (secrets.token_urlsafe(24), secrets.token_urlsafe(24), secrets.token_urlsafe(48))
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        query = urlencode({
            "response_type": "code", "client_id": self.client_id, "redirect_uri": redirect_url,
            "scope": "openid email profile", "state": state, "nonce": nonce,
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        cookie = signer.dumps("login", {
            "state": state, "nonce": nonce, "verifier": verifier, "redirect": redirect_url,
            "exp": int(time.time()) + LOGIN_TTL_SECONDS,
        })
        endpoint = conf["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}", cookie

    async def finish(
        self, signer: Signer, verifier: OIDCVerifier | None, login_cookie: str | None, *, code: str, state: str
    ) -> tuple[Principal, float]:
        """The verified person and their ID token's expiry (epoch seconds)."""
        login = signer.loads("login", login_cookie)
        if login is None or not hmac.compare_digest(str(login["state"]), state):
            raise LoginFailed("the login expired or did not start here: try again")
        if verifier is None:
            raise LoginFailed("no OIDC issuer is trusted by this broker")
        conf = await self.discovery()
        try:
            resp = await self.http.post(conf["token_endpoint"], data={
                "grant_type": "authorization_code", "code": code, "redirect_uri": login["redirect"],
                "client_id": self.client_id, "code_verifier": login["verifier"],
            })
        except httpx.HTTPError:
            raise LoginFailed("the identity provider is unavailable") from None
        id_token = resp.json().get("id_token") if resp.status_code == 200 else None
        if not isinstance(id_token, str):
            raise LoginFailed("the identity provider refused the login code")
        try:
            principal = await verifier.verify(id_token)
        except IdentityError as exc:
            raise LoginFailed(f"the ID token was refused: {exc}") from None
        except IssuerUnavailable:
            raise LoginFailed("the identity provider is unavailable") from None
        # Signature, issuer, audience and expiry were checked above; the nonce binds this
        # token to this login, so a token captured elsewhere cannot be replayed into it.
        claims = jwt.decode(id_token, options={"verify_signature": False})
        if not hmac.compare_digest(str(claims.get("nonce", "")), str(login["nonce"])):
            raise LoginFailed("the ID token does not belong to this login (nonce)")
        if principal.kind != "person":
            raise LoginFailed("the console is for people; agents use the API")
        return principal, float(claims["exp"])

    async def aclose(self) -> None:
        await self.http.aclose()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
