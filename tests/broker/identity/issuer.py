"""A test OIDC issuer: our own RSA/EC keys, discovery and JWKS served through httpx.MockTransport."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from broker.identity.oidc import OIDCVerifier
from broker.identity.settings import OidcIssuerSettings

ISSUER = "https://idp.test/realms/acme"
AUDIENCE = "jitgate"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class FakeIssuer:
    issuer: str = ISSUER
    audience: str = AUDIENCE
    rsa_key: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    rsa_kid: str = "rsa-1"
    ec_kid: str = "ec-1"
    jwks_requests: int = 0
    down: bool = False

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = RSAAlgorithm.to_jwk(self.rsa_key.public_key(), as_dict=True)
        ec_jwk = ECAlgorithm.to_jwk(self.ec_key.public_key(), as_dict=True)
        return {"keys": [{**rsa_jwk, "kid": self.rsa_kid}, {**ec_jwk, "kid": self.ec_kid}]}

    def rotate(self) -> None:
        self.rsa_key = rsa.generate_private_key(65537, 2048)
        self.rsa_kid = self.rsa_kid + "'"

    def handler(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            return httpx.Response(503)
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": self.issuer, "jwks_uri": f"{self.issuer}/certs"})
        if str(request.url) == f"{self.issuer}/certs":
            self.jwks_requests += 1
            return httpx.Response(200, json=self.jwks())
        return httpx.Response(404)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        base = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "u-123",
            "email": "alice@example.com",
            "groups": ["engineers"],
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        base.update(overrides)
        return {k: v for k, v in base.items() if v is not None}

    def mint(self, alg: str = "RS256", kid: str | None = None, key: Any = None, **claims: Any) -> str:
        if key is None:
            key = self.rsa_key if alg == "RS256" else self.ec_key
        if kid is None:
            kid = self.rsa_kid if alg == "RS256" else self.ec_kid
        return jwt.encode(self.claims(**claims), key, algorithm=alg, headers={"kid": kid})

    def mint_hs256_with_public_key(self, **claims: Any) -> str:
        """The classic confusion attack: HMAC keyed with the issuer's public key (PEM)."""
        secret = self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.rsa_kid}).encode())
        payload = _b64(json.dumps(self.claims(**claims)).encode())
        sig = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64(sig)}"

    def settings(self, **kw: Any) -> OidcIssuerSettings:
        return OidcIssuerSettings(issuer=self.issuer, audience=self.audience, **kw)

    def verifier(self, *settings: OidcIssuerSettings, **kw: Any) -> OIDCVerifier:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return OIDCVerifier(settings or (self.settings(),), http=http, **kw)
