"""The dev issuer's unauthenticated device endpoint cannot exhaust memory: device codes expire,
every request prunes what expired, and the number pending is capped; the approve page says
which client asked, and when."""

from __future__ import annotations

import httpx
import pytest

from broker.identity.devissuer import (
    AUTH_CODE_TTL,
    DEVICE_CODE_TTL,
    DEVICE_GRANT,
    MAX_PENDING_DEVICE_CODES,
    DevIssuer,
    DevUser,
)

ISSUER = "http://dev.test"
CAP = 5


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def dev(clock: Clock) -> DevIssuer:
    return DevIssuer(ISSUER, users={"alice": DevUser(groups=("dba",))}, clock=clock,
                     max_pending_device_codes=CAP)


def client(dev: DevIssuer) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(dev.app()), base_url=ISSUER)


def test_the_default_cap_is_a_thousand() -> None:
    assert MAX_PENDING_DEVICE_CODES == 1000
    assert DevIssuer(ISSUER).max_pending_device_codes == MAX_PENDING_DEVICE_CODES


async def test_pending_device_codes_are_capped_with_slow_down(dev: DevIssuer, clock: Clock) -> None:
    async with client(dev) as http:
        codes = [(await http.post("/device/code", data={"client_id": "c"})).json() for _ in range(CAP)]
        assert all("device_code" in c for c in codes)
        clock.now += 60
        over = await http.post("/device/code", data={"client_id": "c"})
        assert over.status_code == 429
        body = over.json()
        assert body["error"] == "slow_down"
        assert "too many pending device codes" in body["error_description"]
        # The oldest code frees its slot when it expires, 60 s after the others were asked for.
        assert int(over.headers["retry-after"]) == DEVICE_CODE_TTL - 60
        assert len(dev._pending) == CAP  # the refused request stored nothing

        # The codes already handed out still work while the cap holds.
        approve = {"user_code": codes[0]["user_code"], "user": "alice"}
        assert (await http.post("/device/approve", data=approve)).status_code == 200
        poll = {"grant_type": DEVICE_GRANT, "device_code": codes[0]["device_code"]}
        assert "id_token" in (await http.post("/token", data=poll)).json()
        assert (await http.post("/device/code", data={"client_id": "c"})).status_code == 200  # its slot


async def test_expired_codes_are_pruned_on_any_request(dev: DevIssuer, clock: Clock) -> None:
    async with client(dev) as http:
        for _ in range(CAP):
            assert (await http.post("/device/code")).status_code == 200
        assert (await http.post("/device/code")).status_code == 429
        clock.now += DEVICE_CODE_TTL
        # Nobody polls the expired codes: a request to any endpoint drops them all the same.
        assert (await http.get("/jwks")).status_code == 200
        assert dev._pending == {}
        assert (await http.post("/device/code")).status_code == 200


async def test_an_expired_code_cannot_be_approved_or_redeemed(dev: DevIssuer, clock: Clock) -> None:
    async with client(dev) as http:
        code = (await http.post("/device/code")).json()
        clock.now += DEVICE_CODE_TTL
        r = await http.post("/device/approve", data={"user_code": code["user_code"], "user": "alice"})
        assert r.status_code == 404
        poll = {"grant_type": DEVICE_GRANT, "device_code": code["device_code"]}
        assert (await http.post("/token", data=poll)).json() == {"error": "expired_token"}


async def test_authorization_codes_expire_from_memory_too(dev: DevIssuer, clock: Clock) -> None:
    from tests.broker.identity.test_devissuer_password import AUTHORIZE

    async with client(dev) as http:
        r = await http.post("/authorize", data={**AUTHORIZE, "user": "alice"})
        assert r.status_code == 303
        assert len(dev._codes) == 1
        clock.now += AUTH_CODE_TTL
        await http.get("/.well-known/openid-configuration")
        assert dev._codes == {}


async def test_the_approve_page_names_the_client_and_when_it_asked(dev: DevIssuer, clock: Clock) -> None:
    async with client(dev) as http:
        code = (await http.post("/device/code", data={"client_id": "<b>jitgate-cli</b>"})).json()
        clock.now += 30
        page = (await http.get("/device/approve", params={"user_code": code["user_code"]})).text
        assert "&lt;b&gt;jitgate-cli&lt;/b&gt;" in page and "<b>jitgate-cli" not in page
        assert "2023-11-14 22:13:20 UTC" in page  # when it asked: clock's start
        assert "30 s ago" in page

        anonymous = (await http.post("/device/code")).json()
        page = (await http.get("/device/approve", params={"user_code": anonymous["user_code"]})).text
        assert "no client_id given" in page

        page = (await http.get("/device/approve", params={"user_code": "NOPE-NOPE"})).text
        assert "unknown or expired" in page
