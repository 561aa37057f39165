"""The dev issuer's device flow and the tokens it signs, checked by the real verifier."""

from __future__ import annotations

import httpx
import pytest

from broker.identity.devissuer import DEVICE_GRANT, DevIssuer, DevUser
from broker.identity.oidc import IdentityError, OIDCVerifier
from broker.identity.settings import OidcIssuerSettings

ISSUER = "http://dev.test"


@pytest.fixture
def dev() -> DevIssuer:
    return DevIssuer(ISSUER, users={"alice": DevUser(groups=("dba",), email="alice@example.com")})


def client(dev: DevIssuer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(dev.app()), base_url=ISSUER)


async def test_device_flow_pending_then_approved(dev: DevIssuer) -> None:
    async with client(dev) as http:
        code = (await http.post("/device/code", data={"client_id": "jitgate"})).json()
        poll = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"]}
        r = await http.post("/token", data=poll)
        assert (r.status_code, r.json()["error"]) == (400, "authorization_pending")
        r = await http.post("/device/approve", data={"user_code": code["user_code"], "user": "alice"})
        assert r.status_code == 200
        token = (await http.post("/token", data=poll)).json()["id_token"]
        r = await http.post("/token", data=poll)  # a device code is good for one token
        assert r.json()["error"] == "expired_token"
        verifier = OIDCVerifier([OidcIssuerSettings(issuer=ISSUER, audience="jitgate")], http=http)
        principal = await verifier.verify(token)
    assert (principal.id, principal.groups) == ("person:alice@example.com", ("dba",))


async def test_approving_unknown_user_or_code_fails(dev: DevIssuer) -> None:
    async with client(dev) as http:
        code = (await http.post("/device/code")).json()
        r = await http.post("/device/approve", data={"user_code": code["user_code"], "user": "eve"})
        assert r.status_code == 404
        r = await http.post("/device/approve", data={"user_code": "NOPE", "user": "alice"})
        assert r.status_code == 404


async def test_minted_token_for_other_audience_is_refused(dev: DevIssuer) -> None:
    async with client(dev) as http:
        verifier = OIDCVerifier([OidcIssuerSettings(issuer=ISSUER, audience="jitgate")], http=http)
        with pytest.raises(IdentityError) as info:
            await verifier.verify(dev.mint("alice", aud="other"))
    assert info.value.reason == "wrong_audience"
