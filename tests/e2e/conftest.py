"""A real jitgate proxy in front of the real (embedded) PostgreSQL, for client-driven tests.

The proxy runs on its own event loop in a background thread, like a separate process would,
so tests may use blocking clients (psycopg, psql via subprocess) as freely as asyncpg.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from broker.approvals.model import Approval, Status
from broker.approvals.service import ApprovalService
from broker.approvals.settings import ApprovalSettings, SlackSettings
from broker.cli.approvals_runtime import open_approvals
from broker.config import ProxySettings, ResourceSettings, Settings, UpstreamSettings
from broker.credentials.settings import VaultSettings
from broker.demo.seed import DemoRoles
from broker.demo.upstream import MD5_USER, TRUST_USER, Upstream
from broker.store import StatementInfo, Store
from broker.store.recorder import Recorder
from proxy.approvals import ApprovalReviewHook
from proxy.hooks import ReviewHook
from proxy.server import ProxyServer
from proxy.wiring import build_context


@dataclass
class Gateway:
    settings: Settings
    loop: asyncio.AbstractEventLoop
    store: Store
    recorder: Recorder
    server: ProxyServer
    thread: threading.Thread
    tokens: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def port(self) -> int:
        return self.server.port

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout)

    def issue(
        self,
        resource: str = "demo",
        *,
        role: str = "readwrite",
        groups=("ai-agents",),
        ttl: timedelta = timedelta(hours=1),
        reusable: bool = True,
        principal: str = "agent:test",
    ) -> str:
        issued = self.call(self.store.tokens.issue_token(principal, list(groups), resource, role, ttl, reusable))
        return issued.token

    def token(self, resource: str = "demo") -> str:
        if resource not in self.tokens:
            self.tokens[resource] = self.issue(resource)
        return self.tokens[resource]

    def dsn(self, resource: str = "demo", token: str | None = None, user: str = "agent", **params: str) -> str:
        token = token if token is not None else self.token(resource)
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        base = f"postgresql://{user}:{quote(token, safe='')}@127.0.0.1:{self.port}/{resource}"
        return f"{base}?{query}" if query else base

    def flush(self) -> None:
        self.call(self.recorder.flush())

    def ended_statements(self, application_name: str, timeout: float = 10) -> list[StatementInfo]:
        """The recorded statements of the ended session with this application_name (waits for
        its end and its records to be written)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.flush()
            for s in self.call(self.store.sessions.list_sessions(limit=500)):
                if s.application_name == application_name and not s.active:
                    return list(self.call(self.store.sessions.get_session(s.id)).statements)
            time.sleep(0.05)
        raise AssertionError(f"no ended session {application_name}")


def _resource(upstream: Upstream, user: str, password: str | None, dbname: str = "demo", **kw: Any) -> ResourceSettings:
    return ResourceSettings(
        upstream=UpstreamSettings(
            host=upstream.host, port=upstream.port, dbname=dbname, sslmode="disable", username=user, password=password
        ),
        **kw,
    )


def start_gateway(
    upstream: Upstream,
    roles: DemoRoles,
    data_dir: Path,
    extra: dict[str, ResourceSettings] | None = None,
    proxy: ProxySettings | None = None,
    review: ReviewHook | None = None,
    vault: VaultSettings | None = None,
    approvals: ApprovalSettings | None = None,
    broker_url: str | None = None,
    slack: SlackSettings | None = None,
) -> Gateway:
    """`approvals`: park `review` statements with the broker's approvals service (the hook is
    `gw.server.ctx.review`, its service `.service`), instead of `review` or refusing them."""
    resources = {
        "demo": _resource(upstream, roles.rw_user, roles.rw_password),
        "demo_md5": _resource(upstream, MD5_USER, upstream.md5user_password),
        "demo_trust": _resource(upstream, TRUST_USER, None),
        "demo_observe": _resource(upstream, roles.rw_user, roles.rw_password, policy="observe"),
        **(extra or {}),
    }
    proxy = proxy or ProxySettings(listen_port=0)
    if not {"max_sessions_per_agent", "max_sessions_per_token"} & proxy.model_fields_set:
        # Tests of other features open many sessions with one token; the concurrent-session
        # caps apply where a test sets them (tests/e2e/test_session_caps.py).
        proxy = proxy.model_copy(update={"max_sessions_per_agent": None, "max_sessions_per_token": None})
    settings = Settings(
        data_dir=data_dir, proxy=proxy, resources=resources, vault=vault,
        **({"approvals": approvals} if approvals is not None else {}),
        **({"broker_url": broker_url} if broker_url is not None else {}),
        slack=slack,
    )
    loop = asyncio.new_event_loop()
    ready: Future[Gateway] = Future()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            store = await Store.open(settings.store_url.get_secret_value())
            recorder = Recorder(store.sessions, flush_interval=0.05)
            recorder.start()
            hook = review
            if approvals is not None:
                # With a broker_url: the production composition (Redis bus, Celery dispatch).
                service = ApprovalService(store.approvals, settings.approvals)
                if broker_url:
                    service = (await open_approvals(settings, store.approvals))[0]
                hook = ApprovalReviewHook(service, wait_seconds=settings.proxy.review_wait_seconds)
            server = ProxyServer(
                build_context(settings, store, recorder, review=hook), host=proxy.listen_host, port=0
            )
            await server.start()
            ready.set_result(Gateway(settings, loop, store, recorder, server, threading.current_thread()))

        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # surface start-up failures to the test
            ready.set_exception(exc)
            return
        loop.run_forever()

    thread = threading.Thread(target=run, name="jitgate-proxy", daemon=True)
    thread.start()
    return ready.result(60)


def stop_gateway(gw: Gateway) -> None:
    async def shutdown() -> None:
        await gw.server.close()
        manager = getattr(gw.server.ctx.credentials, "manager", None)
        if manager is not None:  # Vault renewal tasks end with the gateway
            await manager.aclose()
        await gw.recorder.aclose()
        if isinstance(gw.server.ctx.review, ApprovalReviewHook):
            await gw.server.ctx.review.service.bus.close()
        await gw.store.close()

    gw.call(shutdown())
    gw.loop.call_soon_threadsafe(gw.loop.stop)
    gw.thread.join(10)
    gw.loop.close()


def approval_service(gw: Gateway) -> ApprovalService:
    """The approvals service behind a gateway started with `approvals=`."""
    hook = gw.server.ctx.review
    assert isinstance(hook, ApprovalReviewHook)
    return hook.service


def wait_pending(gw: Gateway, sql: str, timeout: float = 15) -> Approval:
    """The pending approval request of `sql`, once the gateway has parked it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for approval in gw.call(approval_service(gw).find(status=Status.PENDING)):
            if approval.sql == sql:
                return approval
        time.sleep(0.05)
    raise AssertionError(f"no pending approval for {sql!r}")


@pytest.fixture(scope="session")
def gateway(upstream: Upstream, demo_roles: DemoRoles) -> Iterator[Gateway]:
    with tempfile.TemporaryDirectory(prefix="jitgate-gw-") as tmp:
        gw = start_gateway(upstream, demo_roles, Path(tmp))
        try:
            yield gw
        finally:
            stop_gateway(gw)
