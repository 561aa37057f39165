"""A real `jitgate worker` process on the real Redis, posting to the Slack double.

The broker side enqueues with `CeleryDispatcher`, as the proxy and API do; the worker posts
and updates prompts, expires requests from its beat schedule, and survives being killed in
the middle of a post without posting twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.approvals.model import Status, Voter
from broker.approvals.service import ApprovalService, Requester
from broker.config import load_settings
from broker.store import Store
from tests.processes import start, stop
from tests.slack_double import SlackDouble
from workers.dispatch import CeleryDispatcher

DANA = Voter("person:dana@example.com", ("dba",))


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
            env={"JITGATE_CONFIG": str(self.config), "JITGATE_TASK_VISIBILITY_TIMEOUT": "3"},
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
            store, settings.approvals, dispatcher=CeleryDispatcher(settings.broker_url.get_secret_value())
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
    message = await until(lambda: service.store.approval_message(approval.id), what="the prompt")
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
    await until(lambda: service.store.approval_message(approval.id), what="the prompt after 429s")
    assert len(slack.prompts_for(approval.id)) == 1
    assert slack.count("chat.postMessage") >= 5


async def test_worker_killed_mid_post_restarts_without_a_duplicate(service, worker, slack):
    slack.hold_post_seconds = 8
    approval = await park(service, "truncate orders")

    async def posted() -> bool:
        return bool(slack.prompts_for(approval.id))

    await until(posted, what="the post to reach Slack")
    worker.kill()  # Slack has the message; the worker never learnt its ts
    slack.hold_post_seconds = 0
    assert await service.store.approval_message(approval.id) is None
    worker.start()
    message = await until(lambda: service.store.approval_message(approval.id), 60, "the redelivered task")
    assert len(slack.prompts_for(approval.id)) == 1
    assert message[1] == slack.prompts_for(approval.id)[0]["ts"]


async def test_pending_request_expires_from_the_beat_schedule(service, worker, slack, config):
    import dataclasses

    approval = await park(service, "drop table orders")
    # Make it due: the worker's beat runs expire_pending every 10 s.
    await service.store.create_approval(
        dataclasses.replace(approval, id=approval.id + "-x", expires_at=approval.created_at)
    )
    expired = await until(
        lambda: _status(service, approval.id + "-x", Status.EXPIRED), 40, "the beat to expire the request"
    )
    assert expired
    assert (await service.get(approval.id)).status is Status.PENDING


async def _status(service: ApprovalService, approval_id: str, status: Status) -> bool:
    approval = await service.get(approval_id)
    return approval is not None and approval.status is status
