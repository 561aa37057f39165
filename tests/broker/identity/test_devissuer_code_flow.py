"""The dev issuer's browser flow: authorization code with PKCE (S256), as the console uses it."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from broker.identity.devissuer import CODE_GRANT, DevIssuer, DevUser

ISSUER = "http://dev.test/idp"
CALLBACK = "http://dev.test/console/callback"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
AUTHORIZE = {"client_id": "jitgate", "redirect_uri": CALLBACK, "state": "st", "nonce": "n1",
             "code_challenge": CHALLENGE, "code_challenge_method": "S256"}


@pytest.fixture
def dev() -> DevIssuer:
    return DevIssuer(ISSUER, users={"alice": DevUser(groups=("dba",), email="alice@example.com")})


def client(dev: DevIssuer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(dev.app()), base_url="http://dev.test")


async def code_for(http: httpx.AsyncClient, user: str = "alice", **overrides: str) -> str:
    r = await http.post("/authorize", data={**AUTHORIZE, **overrides, "user": user})
    assert r.status_code == 303, r.text
    query = parse_qs(urlsplit(r.headers["location"]).query)
    assert query["state"] == ["st"]
    return query["code"][0]


async def test_code_with_pkce_gives_an_id_token_with_the_nonce_once(dev: DevIssuer) -> None:
    async with client(dev) as http:
        page = await http.get("/authorize", params={**AUTHORIZE, "response_type": "code"})
        assert page.status_code == 200 and 'data-user="alice"' in page.text
        discovery = (await http.get("/.well-known/openid-configuration")).json()
        assert discovery["authorization_endpoint"] == f"{ISSUER}/authorize"
        code = await code_for(http)
        redeem = {"grant_type": CODE_GRANT, "code": code, "redirect_uri": CALLBACK, "client_id": "jitgate",
                  "code_verifier": VERIFIER}
        r = await http.post("/token", data=redeem)
        assert r.status_code == 200
        claims = jwt.decode(r.json()["id_token"], options={"verify_signature": False})
        assert (claims["sub"], claims["nonce"], claims["aud"], claims["groups"]) == ("alice", "n1", "jitgate", ["dba"])
        assert (await http.post("/token", data=redeem)).json()["error"] == "invalid_grant"  # one use


async def test_wrong_verifier_redirect_or_client_is_refused(dev: DevIssuer) -> None:
    async with client(dev) as http:
        for wrong in ({"code_verifier": "x" * 64}, {"redirect_uri": "http://dev.test/other"}, {"client_id": "evil"}):
            code = await code_for(http)
            redeem = {"grant_type": CODE_GRANT, "code": code, "redirect_uri": CALLBACK, "client_id": "jitgate",
                      "code_verifier": VERIFIER, **wrong}
            r = await http.post("/token", data=redeem)
            assert (r.status_code, r.json()["error"]) == (400, "invalid_grant"), wrong


async def test_authorize_refuses_foreign_redirects_missing_pkce_and_unknown_users(dev: DevIssuer) -> None:
    async with client(dev) as http:
        foreign = await http.get("/authorize", params={**AUTHORIZE, "response_type": "code",
                                                       "redirect_uri": "https://evil.test/cb"})
        assert foreign.status_code == 400
        plain = await http.post("/authorize", data={**AUTHORIZE, "code_challenge_method": "plain", "user": "alice"})
        assert plain.status_code == 400
        assert (await http.post("/authorize", data={**AUTHORIZE, "user": "mallory"})).status_code == 404
