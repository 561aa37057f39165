"""Agent identity: an agent's owner rides on its grants, and agent rules cap what any agent may
get whatever the groups say."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from broker.api.app import create_app
from broker.config import ResourceSettings, Settings, UpstreamSettings
from broker.identity.access import decide
from broker.identity.oidc import Principal
from broker.identity.settings import AccessRuleSettings, AccessSettings, AgentRuleSettings
from broker.store import SessionStart, Store
from tests.broker.identity.issuer import FakeIssuer
from tests.broker.test_tokens_cmd import app, config, verify  # noqa: F401 - app and config are fixtures

RULES = [
    AccessRuleSettings(groups=["ai-agents", "dba"], resources=["*"], roles=["readonly", "readwrite"],
                       approval="auto", max_ttl="1h"),
]
AGENT_RULES = [AgentRuleSettings(agents=["agent:ci-*"], resources=["prod"], deny_roles=["readwrite"])]
HOUR = timedelta(hours=1)


def agent(name: str, *groups: str, owner: str | None = None) -> Principal:
    return Principal(subject=name, issuer="i", groups=groups, kind="agent", owner=owner)


def test_agent_rule_denies_role_whatever_the_groups() -> None:
    d = decide(RULES, agent("ci-deploy", "dba", owner="dave@example.com"), "prod", "readwrite", HOUR, AGENT_RULES)
    assert d.outcome == "deny"
    assert d.reason == (
        "agent rule 0 forbids role 'readwrite' on 'prod' to agent:ci-deploy (acting for person:dave@example.com)"
    )


def test_agent_rule_leaves_other_roles_resources_agents_and_people_alone() -> None:
    assert decide(RULES, agent("ci-deploy", "dba"), "prod", "readonly", HOUR, AGENT_RULES).outcome == "grant"
    assert decide(RULES, agent("ci-deploy", "dba"), "demo", "readwrite", HOUR, AGENT_RULES).outcome == "grant"
    assert decide(RULES, agent("claude", "dba"), "prod", "readwrite", HOUR, AGENT_RULES).outcome == "grant"
    person = Principal(subject="ci-deploy", issuer="i", groups=("dba",))
    assert decide(RULES, person, "prod", "readwrite", HOUR, AGENT_RULES).outcome == "grant"


def test_agent_rule_wildcards() -> None:
    every = [AgentRuleSettings(agents=["agent:*"], deny_roles=["readwrite"])]
    assert decide(RULES, agent("anything", "dba"), "demo", "readwrite", HOUR, every).outcome == "deny"


def test_owner_id_names_a_person() -> None:
    assert agent("a", owner="bob").owner_id == "person:bob"
    assert agent("a", owner="person:bob@x").owner_id == "person:bob@x"
    assert agent("a").owner_id is None


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, FakeIssuer, Store]]:
    idp = FakeIssuer()
    upstream = UpstreamSettings(host="127.0.0.1", dbname="demo", username="app")
    settings = Settings(
        data_dir=tmp_path,
        resources={"demo": ResourceSettings(upstream=upstream), "prod": ResourceSettings(upstream=upstream)},
        access=AccessSettings(rules=RULES, agent_rules=AGENT_RULES),
    )
    store = await Store.open(settings.store_url.get_secret_value())
    conf = idp.settings(kind="agent", owner_claim="actor")
    api = create_app(settings, store, oidc=idp.verifier(conf))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://api.test") as client:
        yield client, idp, store
    await store.close()


async def test_exchanged_token_names_agent_and_owner(env) -> None:
    client, idp, store = env
    workload = idp.mint(sub="ci-deploy", email=None, groups=["ai-agents"], actor="dave@example.com")
    req = {"subject_token": workload, "resource": "demo", "role": "readwrite", "reason": "deploy 7", "ttl": "30m"}
    r = await client.post("/v1/tokens/exchange", json=req)
    assert r.status_code == 201, r.text
    grant = await store.tokens.verify_token(r.json()["token"], "demo")
    assert (grant.principal, grant.owner) == ("agent:ci-deploy", "person:dave@example.com")
    issued = [e async for e in store.audit.iter_audit() if e.type == "token.issue"]
    assert issued[-1].data["owner"] == "person:dave@example.com"
    session_id = await store.sessions.start_session(SessionStart(grant, client_addr="127.0.0.1"))
    started = [e async for e in store.audit.iter_audit() if e.type == "session.start"]
    assert started[-1].session_id == session_id and started[-1].data["owner"] == "person:dave@example.com"


async def test_exchange_refused_by_agent_rule(env) -> None:
    client, idp, _ = env
    workload = idp.mint(sub="ci-deploy", email=None, groups=["ai-agents"], actor="dave@example.com")
    req = {"subject_token": workload, "resource": "prod", "role": "readwrite", "reason": "deploy 7", "ttl": "30m"}
    r = await client.post("/v1/tokens/exchange", json=req)
    assert r.status_code == 403, r.text
    assert "agent rule 0" in r.text


async def test_token_without_owner_stays_as_before(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    try:
        issued = await store.tokens.issue_token("person:alice", ["dba"], "demo", "readonly", HOUR)
        grant = await store.tokens.verify_token(issued.token, "demo")
        assert grant.owner is None
        assert "owner" not in [e async for e in store.audit.iter_audit()][-1].data
    finally:
        await store.close()


def test_cli_issue_with_owner(app: typer.Typer, config: Path) -> None:  # noqa: F811
    args = ["token", "issue", "--resource", "demo", "--role", "readonly", "--principal", "agent:ci",
            "--owner", "person:dave@example.com", "--json", "--config", str(config)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["owner"] == "person:dave@example.com"
    assert verify(config, body["token"]).owner == "person:dave@example.com"
