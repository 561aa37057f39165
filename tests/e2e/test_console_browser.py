"""The approvals console in a real headless Chromium (Debian's `chromium`, driven by Playwright).

psql parks `delete` in the real proxy → a person logs in to the console through the dev
issuer's authorization-code page → sees the statement with its countdown → clicks Approve (or
Deny with a reason) → psql finishes. The API runs on the gateway's loop (uvicorn), so it shares
the gateway's store and approvals service. A failing test leaves a screenshot in
`test-artifacts/` and prints its path.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from broker.api.app import create_app
from broker.approvals.model import Approval, Scope, Status
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.config import ProxySettings
from broker.identity.devissuer import DevIssuer, DevUser
from broker.identity.oidc import OIDCVerifier
from broker.identity.settings import OidcIssuerSettings, OidcSettings
from proxy.approvals import ApprovalReviewHook
from tests.conftest import free_port, require_binary, unavailable
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


class Stack:
    def __init__(self, gw: Gateway, api_url: str, admin_dsn: str) -> None:
        self.gw, self.api_url, self.admin_dsn = gw, api_url, admin_dsn

    @property
    def service(self):
        hook = self.gw.server.ctx.review
        assert isinstance(hook, ApprovalReviewHook)
        return hook.service

    def scratch(self, table: str, rows: int) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f"drop table if exists {table}")
            admin.execute(f"create table {table} (id int)")
            admin.execute(f"insert into {table} select generate_series(1, {rows})")
            admin.execute(f"grant all on {table} to public")

    def psql(self, sql: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["psql", "-X", "-v", "ON_ERROR_STOP=1", "-c", sql, self.gw.dsn()], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )

    def pending(self, sql: str, timeout: float = 15) -> Approval:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.gw.call(self.service.find(status=Status.PENDING)):
                if a.sql == sql:
                    return a
            time.sleep(0.05)
        raise AssertionError(f"no pending approval for {sql!r}")


@pytest.fixture(scope="module")
def stack(upstream, demo_roles, tmp_path_factory) -> Iterator[Stack]:
    require_binary("psql")
    tmp = tmp_path_factory.mktemp("console-e2e")
    approvals = ApprovalSettings(
        reminder_after=None, escalate_after=None,
        rules=[ApprovalRuleSettings(approvers=["dba"], scopes=[Scope.ONCE, Scope.SESSION])],
    )
    gw = start_gateway(upstream, demo_roles, tmp, approvals=approvals,
                       proxy=ProxySettings(listen_port=0, review_wait_seconds=60))
    port = free_port()
    api_url = f"http://127.0.0.1:{port}"
    dev = DevIssuer(f"{api_url}/dev-issuer", users={"dana": DevUser(groups=("dba",), email="dana@example.com")})
    settings = gw.settings.model_copy(
        update={"oidc": OidcSettings(issuers=[OidcIssuerSettings(issuer=dev.issuer, audience=dev.audience)])}
    )
    server: dict[str, Any] = {}

    async def serve_api() -> None:
        app = create_app(settings, gw.store, dev_issuer=dev, approvals_service=gw.server.ctx.review.service)
        # As in the demo: the API reads its own issuer's keys in-process.
        server["http"] = httpx.AsyncClient(transport=httpx.ASGITransport(app))
        app.state.oidc = OIDCVerifier(settings.oidc.issuers, http=server["http"])
        server["app"] = app
        uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           log_config=None))
        uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        server["uv"] = uv
        server["task"] = asyncio.ensure_future(uv.serve())
        while not uv.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.02)

    gw.call(serve_api())
    try:
        yield Stack(gw, api_url, upstream.dsn("demo"))
    finally:
        async def stop_api() -> None:
            server["uv"].should_exit = True
            await server["task"]
            await server["app"].state.console.oidc.aclose()
            await server["http"].aclose()

        gw.call(stop_api())
        stop_gateway(gw)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as pw:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start.
        launched = pw.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    failed_before = request.session.testsfailed
    try:
        yield page
    finally:
        # The call phase's failure is counted before fixtures are torn down.
        if request.session.testsfailed > failed_before:
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / f"{request.node.name}.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"\nconsole screenshot: {shot}")
            except Exception as exc:  # the page may be gone; the test's own failure matters more
                print(f"\nno screenshot ({type(exc).__name__})")
        context.close()


def log_in(page: Any, stack: Stack) -> None:
    page.goto(f"{stack.api_url}/console/")
    page.wait_for_url(re.compile(r"/dev-issuer/authorize\?"))  # the issuer's sign-in page
    page.click('button[data-user="dana"]')
    page.wait_for_url(f"{stack.api_url}/console/")
    assert "person:dana@example.com" in page.inner_text("header")


def test_log_in_and_approve_a_parked_delete_from_the_page(stack, page):
    stack.scratch("console_a", 5)
    proc = stack.psql("delete from console_a")
    try:
        approval = stack.pending("delete from console_a")
        log_in(page, stack)
        card = page.locator(f"#approval-{approval.id}")
        card.wait_for()
        assert "delete from console_a" in card.inner_text()
        assert "agent:test" in card.inner_text() and "agent-safe/write-without-where" in card.inner_text()
        page.wait_for_function(
            f"document.querySelector('#approval-{approval.id} .countdown').textContent.includes('left')"
        )
        assert proc.poll() is None  # psql is still parked
        card.locator('button[data-action="approve"]').click()
        page.wait_for_url(re.compile(r"done=approved"))
        assert "approval was recorded" in page.inner_text("#notice")
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0 and out.strip() == "DELETE 5", err
        stack.gw.flush()
        page.goto(f"{stack.api_url}/console/sessions/{approval.session_id}")  # the replay
        statements = page.inner_text("#statements")
        assert "delete from console_a" in statements and "review" in statements
        assert approval.id in page.inner_text("main")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    decided = stack.gw.call(stack.service.get(approval.id))
    assert decided.status is Status.APPROVED and decided.votes[0].via == "console"


def test_deny_with_a_reason_from_the_page_reaches_psql(stack, page):
    stack.scratch("console_d", 3)
    proc = stack.psql("delete from console_d")
    try:
        approval = stack.pending("delete from console_d")
        log_in(page, stack)
        card = page.locator(f"#approval-{approval.id}")
        card.wait_for()
        deny = card.locator(f'form[action="/console/approvals/{approval.id}/deny"]')
        deny.locator('input[name="reason"]').fill("after the backup, please")
        deny.locator('button[data-action="deny"]').click()
        page.wait_for_url(re.compile(r"done=denied"))
        out, err = proc.communicate(timeout=20)
        assert proc.returncode != 0 and "after the backup, please" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    with psycopg.connect(stack.admin_dsn) as admin:
        assert admin.execute("select count(*) from console_d").fetchone()[0] == 3


def test_live_sessions_page_streams_statements_in(stack, page):
    with psycopg.connect(stack.gw.dsn(), autocommit=True, application_name="console-live") as conn:
        conn.execute("select 1 as first_statement")
        stack.gw.flush()
        log_in(page, stack)
        page.goto(f"{stack.api_url}/console/sessions")
        live = page.locator("#live")
        assert "first_statement" in live.inner_text() and "console-live" in live.inner_text()
        conn.execute("select 2 as streamed_in_later")
        stack.gw.flush()
        # No reload: the page's poll brings the new statement in.
        page.wait_for_function("document.querySelector('#live').textContent.includes('streamed_in_later')")
    page.reload()
    deadline = time.monotonic() + 10
    while "console-live" in page.inner_text("#live"):  # the session ended: no longer live
        assert time.monotonic() < deadline, "ended session still shown as live"
        time.sleep(0.2)
        page.reload()
