"""The dev issuer with a demo password: no endpoint signs anyone in without it."""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from fastapi.routing import APIRoute

from broker.identity.devissuer import CODE_GRANT, DEVICE_GRANT, DevIssuer, DevUser

ISSUER = "http://dev.test/idp"
PASSWORD = "correct horse battery staple"
VERIFIER = "v" * 64
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
AUTHORIZE = {"client_id": "jitgate", "redirect_uri": "http://dev.test/console/callback", "state": "st",
             "nonce": "n1", "code_challenge": CHALLENGE, "code_challenge_method": "S256"}
JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]+")


@pytest.fixture
def dev() -> DevIssuer:
    return DevIssuer(ISSUER, users={"dana": DevUser(groups=("dba",), email="dana@example.com")},
                     password=PASSWORD)


def client(dev: DevIssuer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(dev.app()), base_url="http://dev.test")


async def test_device_approval_needs_the_password(dev: DevIssuer) -> None:
    async with client(dev) as http:
        code = (await http.post("/device/code", data={"client_id": "jitgate"})).json()
        # The verification page `jitgate login` points at: a form asking for the password.
        page = await http.get("/device/approve", params={"user_code": code["user_code"]})
        assert page.status_code == 200 and f'value="{code["user_code"]}"' in page.text
        assert 'type="password" name="password"' in page.text and PASSWORD not in page.text
        poll = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"]}
        for wrong in ({}, {"password": ""}, {"password": "guess"}, {"password": PASSWORD + "x"}):
            r = await http.post("/device/approve", data={"user_code": code["user_code"], "user": "dana", **wrong})
            assert r.status_code == 401, r.text
            assert "demo password" in r.json()["detail"] and PASSWORD not in r.text
            r = await http.post("/token", data=poll)
            assert r.json() == {"error": "authorization_pending"}
        r = await http.post("/device/approve",
                            data={"user_code": code["user_code"], "user": "dana", "password": PASSWORD})
        assert r.status_code == 200
        token = (await http.post("/token", data=poll)).json()["access_token"]
    assert jwt.decode(token, options={"verify_signature": False})["groups"] == ["dba"]


async def test_sign_in_page_asks_for_the_password_and_refuses_without_it(dev: DevIssuer) -> None:
    async with client(dev) as http:
        page = await http.get("/authorize", params={**AUTHORIZE, "response_type": "code"})
        assert page.status_code == 200
        assert 'type="password" name="password"' in page.text and PASSWORD not in page.text
        for wrong in ({}, {"password": ""}, {"password": "guess"}):
            r = await http.post("/authorize", data={**AUTHORIZE, "user": "dana", **wrong})
            assert r.status_code == 401 and "location" not in r.headers
            assert "demo password" in r.json()["detail"]
        assert dev._codes == {}  # nothing to redeem
        r = await http.post("/authorize", data={**AUTHORIZE, "user": "dana", "password": PASSWORD})
        assert r.status_code == 303
        code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
        r = await http.post("/token", data={"grant_type": CODE_GRANT, "code": code, "code_verifier": VERIFIER,
                                            "client_id": "jitgate", "redirect_uri": AUTHORIZE["redirect_uri"]})
        assert r.status_code == 200 and r.json()["id_token"]


async def test_no_endpoint_mints_a_dba_token_without_the_password(dev: DevIssuer) -> None:
    """Every route, every method, with every field an endpoint reads, but no password."""
    routes = [(method, route.path) for route in dev.router().routes if isinstance(route, APIRoute)
              for method in sorted(route.methods)]
    assert {path for _, path in routes} >= {"/device/code", "/device/approve", "/authorize", "/token"}
    async with client(dev) as http:
        device = (await http.post("/device/code")).json()
        fields = {**AUTHORIZE, "response_type": "code", "user": "dana", "user_code": device["user_code"],
                  "device_code": device["device_code"], "code_verifier": VERIFIER}
        seen: list[str] = []
        for _ in range(2):  # twice: a second pass sees whatever the first one approved
            for grant in (DEVICE_GRANT, CODE_GRANT, "password", "client_credentials"):
                for method, path in routes:
                    data = {**fields, "grant_type": grant}
                    if method == "GET":
                        r = await http.get(path, params=data)
                    else:
                        r = await http.request(method, path, data=data)
                    seen += JWT.findall(r.text) + JWT.findall(r.headers.get("location", ""))
                    for code in parse_qs(urlsplit(r.headers.get("location", "")).query).get("code", []):
                        redeemed = await http.post("/token", data={**data, "grant_type": CODE_GRANT, "code": code})
                        seen += JWT.findall(redeemed.text)
    assert seen == []


def test_a_password_and_auto_approval_do_not_mix() -> None:
    # Auto-approval hands a token to whoever asks for a device code: no password would hold.
    with pytest.raises(ValueError, match="auto_approve_as"):
        DevIssuer(ISSUER, users={"dana": DevUser(groups=("dba",))}, auto_approve_as="dana", password=PASSWORD)


def test_the_password_is_not_in_the_repr(dev: DevIssuer) -> None:
    assert PASSWORD not in repr(dev)
