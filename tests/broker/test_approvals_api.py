"""/v1/approvals: the same rules as Slack and the CLI, over HTTP, with real OIDC bearers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from broker.api.app import create_app
from broker.approvals.service import ApprovalService, Requester
from broker.approvals.settings import ApprovalRuleSettings
from broker.config import ApiSettings, ResourceSettings, Settings, UpstreamSettings, hash_api_token
from broker.identity.settings import AccessRuleSettings, AccessSettings
from broker.store import Store
from tests.broker.identity.issuer import FakeIssuer

ADMIN = "jga_admin-token-for-approvals"


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeIssuer, ApprovalService]]:
    idp = FakeIssuer()
    upstream = UpstreamSettings(host="127.0.0.1", dbname="demo", username="app")
    settings = Settings(
        data_dir=tmp_path,
        api=ApiSettings(tokens=[hash_api_token(ADMIN)]),
        resources={"prod": ResourceSettings(upstream=upstream)},
        access=AccessSettings(
            rules=[AccessRuleSettings(groups=["developers"], resources=["prod"], roles=["readwrite"],
                                      approval="required", approvers=["dba"])]
        ),
    )
    store = await Store.open(settings.store_url.get_secret_value())
    app = create_app(settings, store, oidc=idp.verifier(idp.settings()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as client:
        yield client, idp, app.state.approvals
    await store.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_access_request_approved_in_the_api_and_collected_by_its_requester(env):
    client, idp, _ = env
    olga = bearer(idp.mint(sub="olga", email="olga@example.com", groups=["developers"]))
    dana = bearer(idp.mint(sub="dana", email="dana@example.com", groups=["dba"]))
    eve = bearer(idp.mint(sub="eve", email="eve@example.com", groups=["developers"]))
    r = await client.post("/v1/access-requests", headers=olga,
                          json={"resource": "prod", "role": "readwrite", "reason": "incident 7"})
    request_id = r.json()["id"]
    assert r.json()["status"] == "pending"

    listed = (await client.get("/v1/approvals?status=pending", headers=dana)).json()
    assert [a["id"] for a in listed] == [request_id]
    assert listed[0]["kind"] == "access" and listed[0]["reason"] == "incident 7"
    assert (await client.get("/v1/approvals", headers=eve)).json() == []  # neither hers nor hers to decide
    assert (await client.post(f"/v1/approvals/{request_id}/approve", headers=eve)).status_code == 404

    own = await client.post(f"/v1/approvals/{request_id}/approve", headers=olga)
    assert own.status_code == 403 and own.json()["detail"]["code"] == "self_approval"
    assert (await client.post(f"/v1/access-requests/{request_id}/token", headers=olga)).status_code == 409

    approved = await client.post(f"/v1/approvals/{request_id}/approve", headers=dana)
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    twice = await client.post(f"/v1/approvals/{request_id}/approve", headers=dana)  # double click
    assert twice.status_code == 409 and twice.json()["detail"]["code"] == "not_pending"
    assert "already approved by person:dana@example.com at " in twice.json()["detail"]["message"]
    assert len((await client.get(f"/v1/approvals/{request_id}", headers=dana)).json()["votes"]) == 1

    assert (await client.post(f"/v1/access-requests/{request_id}/token", headers=eve)).status_code == 404
    collected = await client.post(f"/v1/access-requests/{request_id}/token", headers=olga)
    assert collected.status_code == 200 and collected.json()["token"].startswith("jgt_")
    assert collected.json()["status"] == "granted"
    assert (await client.post(f"/v1/access-requests/{request_id}/token", headers=olga)).status_code == 409
    shown = (await client.get(f"/v1/approvals/{request_id}", headers=dana)).text
    assert collected.json()["token"] not in shown


async def test_parked_statement_deny_needs_a_reason_and_api_tokens_cannot_vote(env):
    client, idp, service = env
    parked = await service.park_statement(
        session_id="s1", requester=Requester("agent:bot", ("ai-agents",), "person:olga@example.com"),
        resource="prod", sql="delete from customers", rule="agent-safe/write-without-where", risk="no WHERE",
    )
    dana = bearer(idp.mint(sub="dana", email="dana@example.com", groups=["dba"]))
    olga = bearer(idp.mint(sub="olga", email="olga@example.com", groups=["dba"]))
    admin = bearer(ADMIN)
    assert [a["sql"] for a in (await client.get("/v1/approvals", headers=admin)).json()] == ["delete from customers"]
    refused = await client.post(f"/v1/approvals/{parked.id}/approve", headers=admin)
    assert refused.status_code == 403 and refused.json()["detail"]["code"] == "not_approver"
    owner = await client.post(f"/v1/approvals/{parked.id}/approve", headers=olga)  # the agent's owner
    assert owner.status_code == 403 and owner.json()["detail"]["code"] == "self_approval"
    assert (await client.post(f"/v1/approvals/{parked.id}/deny", headers=dana, json={"reason": ""})).status_code == 422
    scope = await client.post(f"/v1/approvals/{parked.id}/approve", headers=dana, json={"scope": "fingerprint"})
    assert scope.status_code == 422 and scope.json()["detail"]["code"] == "scope_not_allowed"
    denied = await client.post(f"/v1/approvals/{parked.id}/deny", headers=dana, json={"reason": "use a WHERE"})
    assert denied.json()["status"] == "denied" and denied.json()["decision_reason"] == "use a WHERE"
    late = await client.post(f"/v1/approvals/{parked.id}/approve", headers=bearer(
        idp.mint(sub="sam", email="sam@example.com", groups=["dba"])))
    assert late.status_code == 409 and late.json()["detail"]["code"] == "not_pending"
    assert "already denied by person:dana@example.com at " in late.json()["detail"]["message"]
    assert "use a WHERE" in late.json()["detail"]["message"]
    assert (await client.get("/v1/approvals")).status_code == 401


async def test_a_second_vote_by_the_same_approver_is_409_already_voted(env):
    client, idp, service = env
    # This request needs two approvers.
    service.settings.rules.append(ApprovalRuleSettings(rules=["agent-safe/truncate"], approvers=["dba"], quorum=2))
    parked = await service.park_statement(
        session_id="s1", requester=Requester("agent:bot", ("ai-agents",)), resource="prod",
        sql="truncate orders", rule="agent-safe/truncate", risk="all rows",
    )
    assert parked.quorum == 2
    dana = bearer(idp.mint(sub="dana", email="dana@example.com", groups=["dba"]))
    sam = bearer(idp.mint(sub="sam", email="sam@example.com", groups=["dba"]))
    assert (await client.post(f"/v1/approvals/{parked.id}/approve", headers=dana)).status_code == 200
    again = await client.post(f"/v1/approvals/{parked.id}/approve", headers=dana)
    assert again.status_code == 409 and again.json()["detail"]["code"] == "already_voted"
    assert "1 more approval" in again.json()["detail"]["message"]
    deny = await client.post(f"/v1/approvals/{parked.id}/deny", headers=dana, json={"reason": "changed my mind"})
    assert deny.status_code == 409  # one vote per person: nothing changed
    assert (await service.get(parked.id)).status.value == "pending"
    done = await client.post(f"/v1/approvals/{parked.id}/approve", headers=sam)
    assert done.status_code == 200 and done.json()["status"] == "approved"


async def test_id_prefix_finds_requests_and_path_ids_stay_exact(env):
    client, idp, service = env
    parked = await service.park_statement(
        session_id="s1", requester=Requester("agent:bot", ("ai-agents",)), resource="prod",
        sql="delete from orders", rule="agent-safe/write-without-where", risk="no WHERE",
    )
    dana = bearer(idp.mint(sub="dana", email="dana@example.com", groups=["dba"]))
    found = await client.get(f"/v1/approvals?id_prefix={parked.id[:8]}", headers=dana)
    assert [a["id"] for a in found.json()] == [parked.id]
    assert (await client.get("/v1/approvals?id_prefix=%25%25%25%25%25%25%25%25", headers=dana)).status_code == 422
    assert (await client.get(f"/v1/approvals?id_prefix={parked.id[:7]}", headers=dana)).status_code == 422
    assert (await client.get(f"/v1/approvals/{parked.id[:8]}", headers=dana)).status_code == 404


async def test_openapi_lists_the_409_of_a_vote(env):
    client, _, _ = env
    spec = (await client.get("/openapi.json")).json()
    for action in ("approve", "deny"):
        conflict = spec["paths"][f"/v1/approvals/{{approval_id}}/{action}"]["post"]["responses"]["409"]
        assert "already_voted" in conflict["description"] and "not_pending" in conflict["description"]
