"""The approvals console over ASGI: the real login flow against the dev issuer, then the
authorisation rules (the API's), CSRF, forged cookies, and the operator pages."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from broker.api.app import create_app
from broker.approvals.model import Approval, Status
from broker.approvals.service import ApprovalService, Requester
from broker.config import ResourceSettings, Settings, UpstreamSettings
from broker.console.app import Console
from broker.console.auth import SESSION_COOKIE, Signer, session_cookie
from broker.identity.devissuer import DevIssuer, DevUser
from broker.identity.oidc import OIDCVerifier, Principal
from broker.identity.settings import OidcIssuerSettings, OidcSettings
from broker.store import SessionStart, Store

BASE = "http://console.test"
ISSUER = f"{BASE}/dev-issuer"


@dataclass
class Env:
    app: Any
    console: Console
    service: ApprovalService
    dev: DevIssuer
    transport: httpx.ASGITransport

    def client(self, **kw: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport, base_url=BASE, **kw)  # type: ignore[arg-type]

    def as_person(self, name: str, groups: tuple[str, ...]) -> httpx.AsyncClient:
        principal = Principal(subject=name, issuer=ISSUER, email=f"{name}@example.com", groups=groups)
        cookie = session_cookie(self.console.signer, principal, time.time() + 600)
        return self.client(cookies={SESSION_COOKIE: cookie})


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    dev = DevIssuer(ISSUER, users={
        "dana": DevUser(groups=("dba",), email="dana@example.com"),
        "eve": DevUser(groups=("developers",), email="eve@example.com"),
    })
    settings = Settings(
        data_dir=tmp_path,
        resources={"prod": ResourceSettings(upstream=UpstreamSettings(host="127.0.0.1", dbname="demo", username="a"))},
        oidc=OidcSettings(issuers=[OidcIssuerSettings(issuer=ISSUER, audience="jitgate")]),
    )
    store = await Store.open(settings.store_url.get_secret_value())
    loopback = httpx.AsyncClient()  # replaced below: the app reaches its own issuer in-process
    verifier = OIDCVerifier(settings.oidc.issuers, http=loopback)
    app = create_app(settings, store, oidc=verifier, dev_issuer=dev)
    transport = httpx.ASGITransport(app=app)
    inner = httpx.AsyncClient(transport=transport)
    verifier._http = inner
    await loopback.aclose()
    console: Console = app.state.console
    console.oidc.http = inner
    try:
        yield Env(app, console, app.state.approvals, dev, transport)
    finally:
        await inner.aclose()
        await store.close()


async def park(service: ApprovalService, sql: str = "delete from customers") -> Approval:
    return await service.park_statement(
        session_id="s1", requester=Requester("agent:bot", ("ai-agents",), "person:olga@example.com"),
        resource="prod", sql=sql, rule="agent-safe/write-without-where", risk="no WHERE",
    )


async def login(env: Env, user: str) -> httpx.AsyncClient:
    client = env.client()
    r = await client.get("/console/")
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")
    r = await client.get(r.headers["location"])
    assert r.status_code == 303
    authorize = r.headers["location"]
    assert authorize.startswith(f"{ISSUER}/authorize?")
    params = dict(parse_qsl(urlsplit(authorize).query))
    assert params["code_challenge_method"] == "S256" and params["nonce"] and params["state"]
    page = await client.get(authorize)
    assert page.status_code == 200 and 'data-user="dana"' in page.text
    form = {k: v for k, v in params.items() if k != "response_type" and k != "scope"}
    r = await client.post(f"{ISSUER}/authorize", data={**form, "user": user})
    assert r.status_code == 303 and r.headers["location"].startswith(f"{BASE}/console/callback?code=")
    r = await client.get(r.headers["location"])
    assert r.status_code == 303 and r.headers["location"] == "/console/", r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/console" in cookie
    return client


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


async def test_login_through_the_dev_issuer_then_approve_from_the_page(env):
    parked = await park(env.service)
    client = await login(env, "dana")
    page = await client.get("/console/")
    assert page.status_code == 200
    assert "delete from customers" in page.text and "agent:bot for person:olga@example.com" in page.text
    assert "agent-safe/write-without-where" in page.text and "0 of 1" in page.text and "data-expires" in page.text
    assert env.dev.mint("dana").split(".")[0] not in page.text  # no token in the page, not even a header
    r = await client.post(f"/console/approvals/{parked.id}/approve",
                          data={"csrf": csrf_of(page.text), "scope": "session"})
    assert r.status_code == 303 and r.headers["location"] == "/console/?done=approved"
    logins = [r async for r in env.app.state.store.audit.iter_audit() if r.type == "auth.login"]
    assert [(r.actor, r.data["method"], r.data["ok"]) for r in logins] == [("person:dana@example.com", "console", True)]
    approved = await env.service.get(parked.id)
    assert approved.status is Status.APPROVED and approved.scope.value == "session"
    assert approved.votes[0].voter == "person:dana@example.com" and approved.votes[0].via == "console"
    assert "Nothing is waiting" in (await client.get("/console/fragments/pending")).text
    out = await client.post("/console/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    assert (await client.get("/console/")).status_code == 303
    await client.aclose()


async def test_without_a_valid_cookie_pages_redirect_and_fragments_answer_401(env):
    async with env.client() as anon:
        r = await anon.get("/console/sessions")
        assert r.status_code == 303 and r.headers["location"] == "/console/login?next=%2Fconsole%2Fsessions"
        assert (await anon.get("/console/fragments/pending", headers={"X-Console-Fragment": "1"})).status_code == 401
        assert (await anon.post("/console/approvals/x/approve", data={"csrf": "x"})).status_code == 401
    principal = Principal(subject="mallory", issuer=ISSUER, groups=("dba",))
    forged = session_cookie(Signer(b"k" * 64), principal, time.time() + 600)  # someone else's key
    async with env.client(cookies={SESSION_COOKIE: forged}) as c:
        assert (await c.get("/console/")).status_code == 303
    genuine = session_cookie(env.console.signer, Principal(subject="eve", issuer=ISSUER), time.time() + 600)
    body, mac = genuine.split(".")
    import base64
    import json
    data = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    data["groups"] = ["dba"]  # promote oneself, keep the signature
    tampered = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode() + "." + mac
    async with env.client(cookies={SESSION_COOKIE: tampered}) as c:
        assert (await c.get("/console/")).status_code == 303
    expired = session_cookie(env.console.signer, principal, time.time() - 1)
    async with env.client(cookies={SESSION_COOKIE: expired}) as c:
        assert (await c.get("/console/")).status_code == 303


async def test_csrf_token_is_required_on_every_post(env):
    parked = await park(env.service)
    async with env.as_person("dana", ("dba",)) as dana:
        assert (await dana.post(f"/console/approvals/{parked.id}/approve", data={})).status_code == 403
        assert (await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": "guess"})).status_code == 403
        as_json = await dana.post(f"/console/approvals/{parked.id}/approve", json={"csrf": "x"})
        assert as_json.status_code == 403
        assert (await dana.post("/console/logout", data={})).status_code == 403
    assert (await env.service.get(parked.id)).status is Status.PENDING


async def test_non_approvers_neither_see_nor_decide_and_denial_needs_a_reason(env):
    parked = await park(env.service)
    async with env.as_person("eve", ("developers",)) as eve:
        page = await eve.get("/console/")
        assert "delete from customers" not in page.text
        assert (await eve.get(f"/console/approvals/{parked.id}")).status_code == 404
        r = await eve.post(f"/console/approvals/{parked.id}/approve", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 404
        assert (await eve.get("/console/sessions")).status_code == 403  # not an approver: no operator pages
        assert (await eve.get("/console/audit/export?format=csv")).status_code == 403
    async with env.as_person("olga", ("dba",)) as olga:  # the agent's owner: sees it, cannot approve it
        page = await olga.get("/console/")
        assert "delete from customers" in page.text and "Your own request" in page.text
        r = await olga.post(f"/console/approvals/{parked.id}/approve", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 403 and "nobody approves their own request" in r.text
    async with env.as_person("dana", ("dba",)) as dana:
        token = csrf_of((await dana.get("/console/")).text)
        r = await dana.post(f"/console/approvals/{parked.id}/deny", data={"csrf": token, "reason": "  "})
        assert r.status_code == 422 and "needs a reason" in r.text
        assert (await env.service.get(parked.id)).status is Status.PENDING
        r = await dana.post(f"/console/approvals/{parked.id}/deny", data={"csrf": token, "reason": "add a WHERE"})
        assert r.status_code == 303
        denied = await env.service.get(parked.id)
        assert denied.status is Status.DENIED and denied.decision_reason == "add a WHERE"
        again = await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})
        assert again.status_code in (303, 409)  # her own earlier vote answers; nothing changes
        assert (await env.service.get(parked.id)).status is Status.DENIED


async def test_operator_pages_for_approvers(env):
    parked = await park(env.service, "drop table orders")
    async with env.as_person("dana", ("dba",)) as dana:
        token = csrf_of((await dana.get("/console/")).text)
        await dana.post(f"/console/approvals/{parked.id}/deny", data={"csrf": token, "reason": "no"})
        assert (await dana.get("/console/sessions")).status_code == 200
        assert (await dana.get("/console/sessions/nope")).status_code == 404
        audit = await dana.get("/console/audit", params={"type": "approval."})
        assert audit.status_code == 200 and "approval.vote" in audit.text
        assert "/console/audit/export?format=ocsf&amp;type=approval." in audit.text
        csv = await dana.get("/console/audit/export", params={"format": "csv", "type": "approval.decide"})
        assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
        assert "approval.decide" in csv.text and "approval.vote" not in csv.text
        assert (await dana.get("/console/audit", params={"since": "yesterday"})).status_code == 422
        health = await dana.get("/console/health")
        assert health.status_code == 200 and 'id="check-store"' in health.text
        assert "not configured" in health.text


async def test_callback_refuses_a_foreign_state(env):
    async with env.client() as client:
        await client.get("/console/login")
        r = await client.get("/console/callback", params={"code": "x", "state": "not-mine"})
        assert r.status_code == 403 and "did not start here" in r.text
        assert SESSION_COOKIE not in client.cookies
    logins = [r async for r in env.app.state.store.audit.iter_audit() if r.type == "auth.login"]
    assert len(logins) == 1 and logins[0].data["ok"] is False and "did not start here" in logins[0].data["reason"]


async def test_slack_health_check_asks_auth_test_with_the_bot_token() -> None:
    from broker.approvals.settings import SlackSettings
    from broker.console.operations import check_slack
    from tests.slack_double import SlackDouble

    with SlackDouble() as slack:
        good = SlackSettings(bot_token=slack.bot_token, signing_secret="s", channel="C1", api_url=slack.base_url)
        assert await check_slack(good) == "ok"
        bad = good.model_copy(update={"bot_token": SecretStr("xoxb-wrong")})
        assert await check_slack(bad) == "error: invalid_auth"
        assert len(slack.calls_to("auth.test")) == 2


async def test_replay_shows_decisions_masking_and_recorded_results(env):
    from datetime import UTC, datetime, timedelta

    from broker.store.records import StatementRecord

    store = env.app.state.store
    issued = await store.tokens.issue_token("agent:bot", ["ai-agents"], "prod", "readwrite", timedelta(hours=1), True)
    grant = await store.tokens.verify_token(issued.token, "prod")
    sid = await store.sessions.start_session(SessionStart(grant, application_name="psql", intent="tidy <orders>"))
    now = datetime.now(UTC)
    results = [{"columns": ["email"], "rows": [["j***@example.com"], [None]], "truncated": True}]
    await store.sessions.record_statements([
        StatementRecord(sid, 1, "select email from customers", "allow", now, rows=2, masked_values=1, results=results),
        StatementRecord(sid, 2, "select pg_read_file('/etc/passwd')", "block", now, rule="agent-safe/file-access",
                        error_sqlstate="42501"),
    ])
    async with env.as_person("dana", ("dba",)) as dana:
        page = await dana.get(f"/console/sessions/{sid}")
        assert page.status_code == 200
        text = page.text
        assert "j***@example.com" in text and "1 values masked" in text and "recording cap reached" in text
        assert "agent-safe/file-access" in text and "error 42501" in text
        assert "tidy &lt;orders&gt;" in text  # escaped, never markup
        assert issued.token not in text
        live = await dana.get("/console/fragments/sessions", headers={"X-Console-Fragment": "1"})
        assert sid in live.text and "select pg_read_file" in live.text
        await store.sessions.end_session(sid, reason="client terminated")
        assert sid not in (await dana.get("/console/fragments/sessions")).text
