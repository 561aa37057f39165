"""A real `jitgate worker` process on the real Redis, posting to the Slack double.

The broker side enqueues with `CeleryDispatcher`, as the proxy and API do; the worker posts
and updates prompts, expires requests from its beat schedule (and publishes each expiry on the
installation's decision bus, where a parked statement's proxy hears it), and survives being
killed in the middle of a post (posting once more after the claim lapses, as the answer was
lost and the app reads no channel history). The installation is not the default
one, so every test here also goes through the installation's own queue and key prefix.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.approvals.bus import RedisBus, channel_for
from broker.approvals.model import Status, Voter
from broker.approvals.service import ApprovalService, Requester
from broker.config import load_settings
from broker.store import Store
from tests.processes import start, stop
from tests.slack_double import SlackDouble
from workers.dispatch import CeleryDispatcher

DANA = Voter("person:dana@example.com", ("dba",))
INSTALLATION = "worker-test"


class HoldingSlack(SlackDouble):
    """Can process a chat.postMessage and then hold the answer, as a slow network would."""

    hold_post_seconds = 0.0

    def handle(self, method: str, args: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        answer = super().handle(method, args, headers)
        if method == "chat.postMessage" and self.hold_post_seconds:
            time.sleep(self.hold_post_seconds)
        return answer


@pytest.fixture
def slack() -> Iterator[HoldingSlack]:
    with HoldingSlack(users={"U_DANA": "dana@example.com"}) as double:
        yield double


@pytest.fixture
def config(tmp_path: Path, redis_url: str, slack: HoldingSlack) -> Path:
    path = tmp_path / "jitgate.yaml"
    path.write_text(yaml.safe_dump({
        "data_dir": str(tmp_path / "data"),
        "store_url": f"sqlite+aiosqlite:///{tmp_path}/jitgate.db",
        "broker_url": redis_url,
        "installation": INSTALLATION,
        "slack": {
            "bot_token": slack.bot_token, "signing_secret": "s3cret", "channel": "C_APPROVALS",
            "api_url": slack.base_url,
        },
        "approvals": {"default_timeout": "1h", "reminder_after": None, "escalate_after": None},
    }))
    return path


class Worker:
    def __init__(self, config: Path, tmp_path: Path) -> None:
        self.config, self.log = config, tmp_path / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start(
            ["worker", "--config", str(self.config), "--concurrency", "1"], log=self.log,
            env={"JITGATE_CONFIG": str(self.config), "JITGATE_TASK_VISIBILITY_TIMEOUT": "3",
                 "JITGATE_SLACK_CLAIM_TTL": "5"},
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@pytest.fixture
def worker(config: Path, tmp_path: Path) -> Iterator[Worker]:
    w = Worker(config, tmp_path)
    w.start()
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
async def service(config: Path) -> AsyncIterator[ApprovalService]:
    settings = load_settings(config)
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        yield ApprovalService(
            store.approvals, settings.approvals,
            dispatcher=CeleryDispatcher(settings.broker_url.get_secret_value(), installation=settings.installation),
        )
    finally:
        await store.close()


async def park(service: ApprovalService, sql: str = "delete from customers"):
    return await service.park_statement(
        session_id="s1", requester=Requester("agent:bot", ("ai-agents",), "person:olga@example.com"),
        resource="demo", sql=sql, rule="agent-safe/write-without-where", risk="DELETE without WHERE",
    )


async def until(predicate, seconds: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_prompt_posted_then_updated_with_the_decision(service, worker, slack):
    approval = await park(service)
    message = await until(lambda: service.approvals.approval_message(approval.id), what="the prompt")
    assert message[0] == "C_APPROVALS"
    assert len(slack.prompts_for(approval.id)) == 1
    await service.vote(approval.id, DANA, "approve")

    async def updated() -> bool:
        return any(
            c.args.get("ts") == message[1] and "Approved" in str(c.args.get("blocks"))
            for c in slack.calls_to("chat.update")
        )

    await until(updated, what="chat.update showing the approval")
    assert len(slack.prompts_for(approval.id)) == 1


async def test_rate_limited_post_is_retried_after_retry_after(service, worker, slack):
    slack.fail_next("chat.postMessage", status=429, retry_after=1, times=4)
    approval = await park(service, "delete from orders")
    await until(lambda: service.approvals.approval_message(approval.id), what="the prompt after 429s")
    assert len(slack.prompts_for(approval.id)) == 1
    assert slack.count("chat.postMessage") >= 5


async def test_worker_killed_mid_post_reposts_once_after_the_claim_lapses(service, worker, slack):
    slack.hold_post_seconds = 8
    approval = await park(service, "truncate orders")

    async def posted() -> bool:
        return bool(slack.prompts_for(approval.id))

    await until(posted, what="the post to reach Slack")
    worker.kill()  # Slack has the message; the worker never learnt its ts
    slack.hold_post_seconds = 0
    assert await service.approvals.approval_message(approval.id) is None
    worker.start()
    message = await until(lambda: service.approvals.approval_message(approval.id), 60, "the redelivered task")
    # Without reading the channel's history (no *:history scope) a post whose answer was lost
    # cannot be found: the redelivered task waits for the claim to lapse, then posts once more.
    prompts = slack.prompts_for(approval.id)
    assert len(prompts) == 2 and message[1] == prompts[-1]["ts"]
    await asyncio.sleep(6)  # another lapse posts nothing: the recorded prompt is updated instead
    await service.vote(approval.id, DANA, "approve")
    await until(lambda: _updated(slack, message[1]), 30, "the recorded prompt to be updated")
    assert len(slack.prompts_for(approval.id)) == 2 and slack.count("conversations.history") == 0


async def test_pending_request_expires_from_the_beat_schedule(service, worker, slack, config):
    approval = await park(service, "drop table orders")
    # Make it due: the worker's beat runs expire_pending every `expiry_check_interval`.
    await service.approvals.create_approval(
        dataclasses.replace(approval, id=approval.id + "-x", expires_at=approval.created_at)
    )
    expired = await until(
        lambda: _status(service, approval.id + "-x", Status.EXPIRED), 40, "the beat to expire the request"
    )
    assert expired
    assert (await service.get(approval.id)).status is Status.PENDING


async def _updated(slack: SlackDouble, ts: str) -> bool:
    return any(c.args.get("ts") == ts for c in slack.calls_to("chat.update"))


async def _status(service: ApprovalService, approval_id: str, status: Status) -> bool:
    approval = await service.get(approval_id)
    return approval is not None and approval.status is status


async def _worker_ready(w: Worker, seconds: float = 30.0) -> None:
    async def ready() -> bool:
        return w.log.exists() and " ready." in w.log.read_text(errors="replace")

    await until(ready, seconds, "the worker to be ready")


async def test_expiry_by_the_worker_is_pushed_on_the_installations_bus(service, worker, config):
    """The worker's expiry reaches a waiter in another process through Redis, within the
    expiry interval (1 s) and a second, not when the waiter's own deadline runs out."""
    settings = load_settings(config)
    bus = RedisBus(settings.broker_url.get_secret_value(), channel=channel_for(INSTALLATION))
    await bus.start()
    try:
        await _worker_ready(worker)
        approval = await park(service, "drop table invoices")
        due = dataclasses.replace(approval, id=approval.id + "-due", expires_at=approval.created_at)
        heard = bus.waiter(due.id)
        await service.approvals.create_approval(due)
        t0 = time.monotonic()
        assert await asyncio.wait_for(heard, 10) == "expired"
        assert time.monotonic() - t0 < 2.5, "the expiry was pushed late"
        assert (await service.get(due.id)).status is Status.EXPIRED
    finally:
        await bus.close()
