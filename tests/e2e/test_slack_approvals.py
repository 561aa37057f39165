"""The whole approval path with every real part that can run here.

psql → jitgate proxy (parks) → store + Redis → a real `jitgate worker` process (Celery on
Redis) posts the prompt to the Slack double → a signed click arrives at the broker API's
/slack/events → the vote is applied → Redis wakes the proxy → psql prints the result.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
import yaml

from broker.api.app import create_app
from broker.approvals.model import Scope, Status
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings, SlackSettings
from broker.cli.approvals_runtime import attach_slack
from broker.config import ProxySettings
from broker.identity.oidc import Principal
from proxy.approvals import ApprovalReviewHook
from tests.conftest import free_port, require_binary
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.processes import start, stop
from tests.slack_double import SlackDouble
from tests.slack_signing import SIGNING_SECRET, SlackSigner

pytestmark = pytest.mark.e2e

PEOPLE = {"U_DANA": "dana@example.com", "U_SAM": "sam@example.com", "U_DEV": "dev@example.com",
          "U_OLGA": "olga@example.com"}
GROUPS = {"dana": ("dba",), "sam": ("dba",), "dev": ("developers",), "olga": ("dba",)}


class Stack:
    def __init__(self, gw: Gateway, slack: SlackDouble, api_url: str, admin_dsn: str) -> None:
        self.gw, self.slack, self.api_url, self.admin_dsn = gw, slack, api_url, admin_dsn
        self.signer = SlackSigner(SIGNING_SECRET)
        self.http = httpx.Client(base_url=api_url, timeout=10)

    @property
    def service(self):
        hook = self.gw.server.ctx.review
        assert isinstance(hook, ApprovalReviewHook)
        return hook.service

    def prompt(self, sql: str, timeout: float = 20) -> tuple[str, str, str]:
        """(approval id, channel, ts) of the prompt the worker posted for `sql`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.gw.call(self.service.find(status=Status.PENDING)):
                if a.sql == sql:
                    for m in self.slack.prompts_for(a.id):
                        return a.id, "C_APPROVALS", m["ts"]
            time.sleep(0.05)
        raise AssertionError(f"no prompt posted for {sql!r}")

    def click(self, user: str, action: str, approval_id: str, ts: str, **kw: Any) -> httpx.Response:
        signed = self.signer.block_actions(
            user_id=user, action_id=action, value=approval_id, channel="C_APPROVALS", message_ts=ts,
            response_url=self.slack.response_url(), **kw,
        )
        return self.http.post("/slack/events", content=signed.body, headers=signed.headers)

    def psql(self, sql: str) -> subprocess.Popen[str]:
        return subprocess.Popen(["psql", "-X", "-c", sql, self.gw.dsn()], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def scratch(self, table: str, rows: int) -> None:
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute(f"drop table if exists {table}")
            admin.execute(f"create table {table} (id int)")
            admin.execute(f"insert into {table} select generate_series(1, {rows})")
            admin.execute(f"grant all on {table} to public")
            admin.execute(f"analyze {table}")

    def wait_update(self, ts: str, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            updates = self.slack.calls_to("chat.update")
            if any(c.args.get("ts") == ts and text in str(c.args.get("blocks")) for c in updates):
                return
            time.sleep(0.05)
        raise AssertionError(f"prompt {ts} never showed {text!r}")

    def ephemerals(self, user: str) -> list[str]:
        calls = self.slack.calls_to("chat.postEphemeral")
        return [str(c.args.get("text")) for c in calls if c.args.get("user") == user]


@pytest.fixture(scope="module")
def stack(upstream, demo_roles, tmp_path_factory) -> Iterator[Stack]:
    require_binary("psql")
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping()
    except redis.RedisError:
        from tests.conftest import unavailable

        unavailable("Redis at 127.0.0.1:6379 does not answer")
    redis_url = "redis://127.0.0.1:6379/12"
    redis.Redis.from_url(redis_url).flushdb()
    tmp = tmp_path_factory.mktemp("slack-e2e")
    with SlackDouble(users=PEOPLE) as slack:
        slack_settings = SlackSettings(
            bot_token=slack.bot_token, signing_secret=SIGNING_SECRET, channel="C_APPROVALS", api_url=slack.base_url,
        )
        approvals = ApprovalSettings(
            reminder_after=None, escalate_after=None,
            rules=[
                ApprovalRuleSettings(rules=["agent-safe/truncate"], approvers=["dba"], quorum=2, scopes=[Scope.ONCE]),
                ApprovalRuleSettings(approvers=["dba"], scopes=[Scope.ONCE, Scope.SESSION]),
            ],
        )
        gw = start_gateway(
            upstream, demo_roles, tmp, approvals=approvals, broker_url=redis_url, slack=slack_settings,
            proxy=ProxySettings(listen_port=0, review_wait_seconds=30),
        )
        config = tmp / "worker.yaml"
        config.write_text(yaml.safe_dump({
            "data_dir": str(tmp / "worker"), "store_url": f"sqlite+aiosqlite:///{tmp}/jitgate.db",
            "broker_url": redis_url, "approvals": approvals.model_dump(mode="json"),
            "slack": {"bot_token": slack.bot_token, "signing_secret": SIGNING_SECRET, "channel": "C_APPROVALS",
                      "api_url": slack.base_url},
        }))
        worker = start(["worker", "--config", str(config), "--concurrency", "1", "--no-beat"], log=tmp / "worker.log")
        port = free_port()
        server: dict[str, Any] = {}

        async def serve_api() -> None:
            for who, groups in GROUPS.items():  # as if each had logged in through OIDC
                await gw.store.approvals.remember_principal(
                    Principal(subject=who, issuer="https://idp.test", email=f"{who}@example.com", groups=groups)
                )
            app = create_app(gw.settings, gw.store, approvals_service=gw.server.ctx.review.service)
            assert attach_slack(
                app, gw.settings, gw.server.ctx.review.service, tokens=gw.store.tokens, access=gw.store.access
            ) is not None
            uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           log_config=None))
            uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
            server["uv"] = uv
            server["task"] = asyncio.ensure_future(uv.serve())
            while not uv.started:  # noqa: ASYNC110 - uvicorn offers no started event
                await asyncio.sleep(0.02)

        gw.call(serve_api())
        try:
            assert str(gw.store.url).startswith("sqlite") and f"{tmp}/jitgate.db" in gw.store.url
            yield Stack(gw, slack, f"http://127.0.0.1:{port}", upstream.dsn("demo"))
        finally:
            async def stop_api() -> None:
                server["uv"].should_exit = True
                await server["task"]

            gw.call(stop_api())
            stop(worker, timeout=20)
            stop_gateway(gw)
            redis.Redis.from_url(redis_url).flushdb()


def test_slack_approve_click_runs_the_parked_delete(stack):
    stack.scratch("slack_a", 5)
    proc = stack.psql("delete from slack_a")
    approval_id, channel, ts = stack.prompt("delete from slack_a")
    assert proc.poll() is None
    posted = next(c for c in stack.slack.calls_to("chat.postMessage") if approval_id in str(c.args.get("metadata")))
    assert "~5 rows (planner estimate)" in str(posted.args["blocks"])  # the blast radius, from EXPLAIN
    answer = stack.click("U_DANA", "jitgate_approve", approval_id, ts)
    assert answer.status_code == 200
    out, err = proc.communicate(timeout=20)
    assert out.strip() == "DELETE 5", err
    stack.wait_update(ts, "Approved")
    approval = stack.gw.call(stack.service.get(approval_id))
    assert approval.votes[0].voter == "person:dana@example.com" and approval.votes[0].via == "slack"


def test_slack_deny_opens_a_modal_and_the_reason_reaches_psql(stack):
    stack.scratch("slack_d", 3)
    proc = stack.psql("delete from slack_d")
    approval_id, _, ts = stack.prompt("delete from slack_d")
    assert stack.click("U_SAM", "jitgate_deny", approval_id, ts).status_code == 200
    deadline = time.monotonic() + 10
    while not stack.slack.calls_to("views.open"):
        assert time.monotonic() < deadline, "no modal"
        time.sleep(0.05)
    view = stack.slack.last("views.open").args["view"]
    block = next(b for b in view["blocks"] if b["type"] == "input")
    signed = stack.signer.view_submission(
        user_id="U_SAM", view=view,
        values={block["block_id"]: {block["element"]["action_id"]: {"type": "plain_text_input",
                                                                   "value": "run it after the backup"}}},
    )
    assert stack.http.post("/slack/events", content=signed.body, headers=signed.headers).status_code == 200
    out, err = proc.communicate(timeout=20)
    assert proc.returncode != 0 and "run it after the backup" in err and "42501" not in out
    stack.wait_update(ts, "Denied")
    with psycopg.connect(stack.admin_dsn) as admin:
        assert admin.execute("select count(*) from slack_d").fetchone()[0] == 3


def test_quorum_self_approval_non_approver_bad_signature_and_double_click(stack):
    stack.scratch("slack_q", 2)
    proc = stack.psql("truncate slack_q")
    approval_id, _, ts = stack.prompt("truncate slack_q")

    bad = stack.signer.block_actions(user_id="U_DANA", action_id="jitgate_approve", value=approval_id,
                                     channel="C_APPROVALS", message_ts=ts, bad_signature=True)
    assert stack.http.post("/slack/events", content=bad.body, headers=bad.headers).status_code == 401
    stale = stack.signer.block_actions(user_id="U_DANA", action_id="jitgate_approve", value=approval_id,
                                       channel="C_APPROVALS", message_ts=ts, timestamp=time.time() - 600)
    assert stack.http.post("/slack/events", content=stale.body, headers=stale.headers).status_code == 401
    assert stack.gw.call(stack.service.get(approval_id)).votes == ()

    stack.click("U_DEV", "jitgate_approve", approval_id, ts)  # not in an approver group
    stack.click("U_DANA", "jitgate_approve", approval_id, ts)
    stack.click("U_DANA", "jitgate_approve", approval_id, ts)  # double click
    deadline = time.monotonic() + 10
    while not stack.ephemerals("U_DEV") or len(stack.gw.call(stack.service.get(approval_id)).votes) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.3)
    approval = stack.gw.call(stack.service.get(approval_id))
    assert [v.voter for v in approval.votes] == ["person:dana@example.com"] and approval.status is Status.PENDING
    assert "approver" in stack.ephemerals("U_DEV")[-1]
    assert proc.poll() is None  # one of two approvals: still parked
    stack.wait_update(ts, "1 of 2")

    stack.click("U_SAM", "jitgate_approve", approval_id, ts)
    out, err = proc.communicate(timeout=20)
    assert out.strip() == "TRUNCATE TABLE", err


def test_nobody_approves_their_own_access_request_in_slack(stack):
    from datetime import timedelta

    from broker.approvals.service import Requester

    approval = stack.gw.call(stack.service.open_access_request(
        request_id="11111111-2222-3333-4444-555555555555",
        requester=Requester("person:olga@example.com", ("dba",)), resource="demo", role="readwrite",
        reason="hotfix for ticket 881", ttl=timedelta(minutes=30), approvers=["dba"],
    ))
    deadline = time.monotonic() + 20
    while not stack.gw.call(stack.gw.store.approvals.approval_message(approval.id)):
        assert time.monotonic() < deadline, "no prompt"
        time.sleep(0.05)
    _, ts = stack.gw.call(stack.gw.store.approvals.approval_message(approval.id))
    stack.click("U_OLGA", "jitgate_approve", approval.id, ts)
    while not stack.ephemerals("U_OLGA"):
        assert time.monotonic() < deadline, "no refusal shown"
        time.sleep(0.05)
    assert "own request" in stack.ephemerals("U_OLGA")[-1]
    assert stack.gw.call(stack.service.get(approval.id)).status is Status.PENDING
    stack.click("U_DANA", "jitgate_approve", approval.id, ts)
    while stack.gw.call(stack.service.get(approval.id)).status is not Status.APPROVED:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    stack.wait_update(ts, "Approved")
