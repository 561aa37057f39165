"""Two installations on one Redis, each with its own real `jitgate worker`: neither takes the
other's tasks.

Before installations were namespaced, every worker consumed the one `jitgate` queue: B's
worker took A's `post_prompt`, found no such request in B's store, acknowledged it, and A's
prompt was never posted. Now A's task waits in A's queue for A's worker, B's worker never
receives it, and each installation's decision channel is its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis
import yaml

from broker.approvals.service import ApprovalService
from broker.config import load_settings
from broker.store import Store
from tests.slack_double import SlackDouble
from tests.workers.test_worker_process import HoldingSlack, Worker, park, until
from workers.app import queue_for
from workers.dispatch import CeleryDispatcher


def _config(root: Path, installation: str, redis_url: str, slack: SlackDouble) -> Path:
    root.mkdir()
    path = root / "jitgate.yaml"
    path.write_text(yaml.safe_dump({
        "installation": installation,
        "data_dir": str(root / "data"),
        "store_url": f"sqlite+aiosqlite:///{root}/jitgate.db",
        "broker_url": redis_url,
        "slack": {"bot_token": slack.bot_token, "signing_secret": "s3cret", "channel": "C_APPROVALS",
                  "api_url": slack.base_url},
        "approvals": {"default_timeout": "1h", "reminder_after": None, "escalate_after": None},
    }))
    return path


@pytest.fixture
def slacks() -> Iterator[tuple[HoldingSlack, HoldingSlack]]:
    with HoldingSlack() as a, HoldingSlack() as b:
        yield a, b


@pytest.fixture
def configs(tmp_path: Path, redis_url: str, slacks: tuple[HoldingSlack, HoldingSlack]) -> tuple[Path, Path]:
    return (_config(tmp_path / "a", "inst-a", redis_url, slacks[0]),
            _config(tmp_path / "b", "inst-b", redis_url, slacks[1]))


@pytest.fixture
async def service_a(configs: tuple[Path, Path]) -> AsyncIterator[ApprovalService]:
    settings = load_settings(configs[0])
    store = await Store.open(settings.store_url.get_secret_value())
    try:
        yield ApprovalService(store.approvals, settings.approvals, dispatcher=CeleryDispatcher(
            settings.broker_url.get_secret_value(), installation=settings.installation))
    finally:
        await store.close()


async def _ready(w: Worker) -> None:
    async def ready() -> bool:
        return w.log.exists() and " ready." in w.log.read_text(errors="replace")

    await until(ready, 30, f"the worker of {w.config.parent.name} to be ready")


async def test_a_task_of_one_installation_is_never_taken_by_another_installations_worker(
    configs, slacks, service_a, redis_url
):
    slack_a, slack_b = slacks
    worker_a, worker_b = Worker(configs[0], configs[0].parent), Worker(configs[1], configs[1].parent)
    client = redis.Redis.from_url(redis_url)
    try:
        worker_b.start()
        await _ready(worker_b)
        approval = await park(service_a)
        # A's post_prompt waits in A's own queue (under A's key prefix) while only B's worker runs.
        queue_key = f"jitgate:inst-a:{queue_for('inst-a')}"
        await until(lambda: asyncio.to_thread(client.llen, queue_key), 10, "A's task in A's queue")
        await asyncio.sleep(3)  # B's worker polls its queue continuously: time enough to take it
        assert client.llen(queue_key) == 1, "A's task was taken off A's queue"
        assert "Task jitgate.post_prompt[" not in worker_b.log.read_text(errors="replace")
        assert slack_b.count("chat.postMessage") == 0
        assert slack_a.count("chat.postMessage") == 0
        # A's own worker takes it and posts A's prompt, to A's Slack.
        worker_a.start()

        async def posted() -> bool:
            return bool(slack_a.prompts_for(approval.id))

        await until(posted, 30, "A's worker to post A's prompt")
        assert len(slack_a.prompts_for(approval.id)) == 1
        assert client.llen(queue_key) == 0
        assert slack_b.count("chat.postMessage") == 0
        assert "Task jitgate.post_prompt[" not in worker_b.log.read_text(errors="replace")
    finally:
        client.close()
        worker_a.stop()
        worker_b.stop()
