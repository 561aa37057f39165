"""/v1/access-requests, /v1/grants/{id}/revoke, /v1/tokens/exchange, and OIDC bearers on /v1."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from broker.api.app import create_app
from broker.config import ApiSettings, ResourceSettings, Settings, UpstreamSettings, hash_api_token
from broker.exceptions import ExpiredToken, InvalidToken
from broker.identity.settings import AccessRuleSettings, AccessSettings
from broker.store import Store
from tests.broker.identity.issuer import FakeIssuer

ADMIN = "jga_admin-token-for-tests"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeIssuer, Store]]:
    idp = FakeIssuer()
    upstream = UpstreamSettings(host="127.0.0.1", dbname="demo", username="app")
    settings = Settings(
        data_dir=tmp_path,
        api=ApiSettings(tokens=[hash_api_token(ADMIN)]),
        resources={"demo": ResourceSettings(upstream=upstream), "prod": ResourceSettings(upstream=upstream)},
        access=AccessSettings(
            gateway_address="gw.test:6432",
            rules=[
                AccessRuleSettings(groups=["ai-agents"], resources=["demo"], roles=["readwrite"],
                                   approval="auto", max_ttl="1h"),
                AccessRuleSettings(groups=["ai-agents"], resources=["prod"], roles=["readwrite"],
                                   approval="required", approvers=["dba"]),
            ],
        ),
    )
    store = await Store.open(settings.store_url.get_secret_value())
    conf = idp.settings(kind_claim="jitgate_kind")
    app = create_app(settings, store, oidc=idp.verifier(conf))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client, idp, store
    await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


REQ = {"resource": "demo", "role": "readwrite", "reason": "investigate ticket 42", "ttl": "30m"}


async def test_auto_granted_request_returns_token_once(env) -> None:
    client, idp, store = env
    alice = idp.mint(groups=["ai-agents"])
    r = await client.post("/v1/access-requests", json=REQ, headers=bearer(alice))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "granted"
    assert body["principal"] == "person:alice@example.com"
    assert body["ttl_seconds"] == 1800
    assert body["dsn"] == "postgresql://alice%40example.com@gw.test:6432/demo"
    token = body["token"]
    grant = await store.tokens.verify_token(token, "demo")
    assert (grant.principal, grant.role, grant.token_id) == ("person:alice@example.com", "readwrite", body["token_id"])
    again = await client.get(f"/v1/access-requests/{body['id']}", headers=bearer(alice))
    assert again.status_code == 200
    assert again.json()["status"] == "granted"
    assert token not in again.text and "token" not in again.json()


async def test_ttl_is_capped_by_policy(env) -> None:
    client, idp, _ = env
    alice = idp.mint(groups=["ai-agents"])
    r = await client.post("/v1/access-requests", json={**REQ, "ttl": "8h"}, headers=bearer(alice))
    assert r.json()["ttl_seconds"] == 3600


async def test_approval_needing_request_waits_pending(env) -> None:
    client, idp, _ = env
    r = await client.post("/v1/access-requests", json={**REQ, "resource": "prod"},
                          headers=bearer(idp.mint(groups=["ai-agents"])))
    assert r.status_code == 201
    body = r.json()
    assert (body["status"], body["approvers"]) == ("pending", ["dba"])
    assert "token" not in body and "dsn" not in body and body.get("token_id") is None


async def test_no_rule_is_403_and_recorded(env) -> None:
    client, idp, _ = env
    r = await client.post("/v1/access-requests", json=REQ, headers=bearer(idp.mint(groups=["visitors"])))
    assert r.status_code == 403
    assert "no access rule" in r.json()["detail"]


@pytest.mark.parametrize("reason", ["", "   "])
async def test_reason_is_mandatory(env, reason: str) -> None:
    client, idp, _ = env
    r = await client.post("/v1/access-requests", json={**REQ, "reason": reason},
                          headers=bearer(idp.mint(groups=["ai-agents"])))
    assert r.status_code == 422
    r = await client.post("/v1/access-requests", json={k: v for k, v in REQ.items() if k != "reason"},
                          headers=bearer(idp.mint(groups=["ai-agents"])))
    assert r.status_code == 422


async def test_unknown_resource_is_404(env) -> None:
    client, idp, _ = env
    r = await client.post("/v1/access-requests", json={**REQ, "resource": "nope"},
                          headers=bearer(idp.mint(groups=["ai-agents"])))
    assert r.status_code == 404


async def test_refused_oidc_bearer_says_why(env) -> None:
    client, idp, _ = env
    r = await client.post("/v1/access-requests", json=REQ,
                          headers=bearer(idp.mint(groups=["ai-agents"], exp=int(time.time()) - 600)))
    assert r.status_code == 401
    assert "expired" in r.json()["detail"]
    r = await client.get("/v1/sessions", headers=bearer(idp.mint(aud="other")))
    assert r.status_code == 401 and "audience" in r.json()["detail"]


async def test_oidc_bearer_and_static_token_both_work_on_v1(env) -> None:
    client, idp, _ = env
    assert (await client.get("/v1/sessions", headers=bearer(idp.mint()))).status_code == 200
    assert (await client.get("/v1/sessions", headers=bearer(ADMIN))).status_code == 200
    assert (await client.get("/v1/sessions", headers=bearer("jga_wrong"))).status_code == 401


async def test_static_api_token_cannot_request_access(env) -> None:
    client, _, _ = env
    r = await client.post("/v1/access-requests", json=REQ, headers=bearer(ADMIN))
    assert r.status_code == 403


async def test_revoke_by_owner_refuses_token_afterwards(env) -> None:
    client, idp, store = env
    alice = idp.mint(groups=["ai-agents"])
    body = (await client.post("/v1/access-requests", json=REQ, headers=bearer(alice))).json()
    mallory = idp.mint(groups=["ai-agents"], sub="m", email="mallory@example.com")
    r = await client.post(f"/v1/grants/{body['token_id']}/revoke", headers=bearer(mallory))
    assert r.status_code == 404  # not hers
    r = await client.post(f"/v1/grants/{body['token_id']}/revoke", headers=bearer(alice))
    assert r.json() == {"token_id": body["token_id"], "revoked": True}
    with pytest.raises(InvalidToken) as info:
        await store.tokens.verify_token(body["token"], "demo")
    assert info.value.reason == "revoked"
    r = await client.post(f"/v1/grants/{body['token_id']}/revoke", headers=bearer(ADMIN))
    assert r.json()["revoked"] is False


async def test_other_principals_request_is_not_found(env) -> None:
    client, idp, _ = env
    body = (await client.post("/v1/access-requests", json=REQ, headers=bearer(idp.mint(groups=["ai-agents"])))).json()
    r = await client.get(f"/v1/access-requests/{body['id']}", headers=bearer(idp.mint(sub="x", email="x@e.com")))
    assert r.status_code == 404
    assert (await client.get(f"/v1/access-requests/{body['id']}", headers=bearer(ADMIN))).status_code == 200


async def test_workload_token_exchange_grants_agent(env) -> None:
    client, idp, store = env
    workload = idp.mint(sub="repo:acme/app:ref:main", email=None, groups=["ai-agents"], jitgate_kind="agent")
    r = await client.post("/v1/tokens/exchange", json={**REQ, "subject_token": workload})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["principal"] == "agent:repo:acme/app:ref:main"
    grant = await store.tokens.verify_token(body["token"], "demo")
    assert grant.principal == "agent:repo:acme/app:ref:main"
    assert grant.reusable is False  # the rule does not say reusable: one session


async def test_exchange_refuses_bad_subject_token(env) -> None:
    client, idp, _ = env
    r = await client.post("/v1/tokens/exchange", json={**REQ, "subject_token": idp.mint_hs256_with_public_key()})
    assert r.status_code == 401
    assert "HS256" in r.json()["detail"]


async def test_expired_gateway_token_refused(env) -> None:
    client, idp, store = env
    body = (await client.post("/v1/access-requests", json={**REQ, "ttl": "1s"},
                              headers=bearer(idp.mint(groups=["ai-agents"])))).json()
    store.clock = lambda: datetime.now(UTC) + timedelta(seconds=5)
    with pytest.raises(ExpiredToken):
        await store.tokens.verify_token(body["token"], "demo")


async def test_unreachable_issuer_is_503_not_401(env) -> None:
    client, idp, _ = env
    idp.down = True
    r = await client.post("/v1/access-requests", json=REQ, headers=bearer(idp.mint(groups=["ai-agents"])))
    assert r.status_code == 503
    assert r.json()["detail"] == "identity provider unavailable"
