"""A Celery worker frozen (SIGSTOP, later SIGCONT) while a request is parked: the decision taken
meanwhile stands, and Slack ends up with one prompt that shows it.

A real `jitgate worker` process (Celery on the real Redis, prefork pool, embedded beat) posts
to the Slack double. The whole process group is stopped, the pool children and beat included,
so nothing of the worker runs while it is frozen, and the freeze (6 s) is longer than the
fixture's Redis visibility timeout (3 s), so a message taken by the frozen worker could be
redelivered. What this proves:

- frozen before the request is parked (its prompt never went out) and decided meanwhile:
  after SIGCONT the decision stands unchanged (approved, by one vote, same decision time), and
  the channel has exactly one message for the request, showing the outcome, not live
  Approve/Deny buttons; chat.postMessage was called once;
- frozen after the prompt was posted and decided meanwhile: after SIGCONT the prompt is
  rewritten with the outcome by exactly one chat.update within a bounded time, and is never
  posted again.

A worker killed (rather than frozen) mid-post is in tests/workers/test_worker_process.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psutil

from broker.approvals.model import Status
from tests.workers.test_worker_process import (  # noqa: F401 - fixtures
    DANA,
    Worker,
    config,
    park,
    service,
    slack,
    until,
    worker,
)

FROZEN_SECONDS = 6.0  # longer than the fixture's visibility timeout (3 s)
QUIET_SECONDS = 5.0  # after the worker caught up: long enough for a redelivery to show


def _tree(w: Worker) -> list[psutil.Process]:
    assert w.proc is not None and w.proc.poll() is None, "the worker is not running"
    root = psutil.Process(w.proc.pid)
    return [root, *root.children(recursive=True)]


async def _ready(w: Worker, seconds: float = 30.0) -> None:
    """Until Celery says it is ready and its prefork pool child is up (something to freeze)."""

    async def ready() -> bool:
        text = w.log.read_text(errors="replace") if w.log.exists() else ""
        return " ready." in text and len(_tree(w)) >= 2

    await until(ready, seconds, "the worker to be ready")


@contextmanager
def frozen(w: Worker) -> Iterator[list[psutil.Process]]:
    """SIGSTOP the worker's process group and every descendant; SIGCONT them all on exit."""
    procs = _tree(w)
    assert w.proc is not None
    try:
        os.killpg(w.proc.pid, signal.SIGSTOP)
        for p in procs:  # in case a child left the group
            with suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while any(p.status() != psutil.STATUS_STOPPED for p in procs):
            assert time.monotonic() < deadline, [(p.pid, p.status()) for p in procs]
            time.sleep(0.02)
        yield procs
    finally:
        with suppress(ProcessLookupError):
            os.killpg(w.proc.pid, signal.SIGCONT)
        for p in procs:
            with suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGCONT)


def _shows_decision(message: dict) -> bool:
    blocks = message.get("blocks") or []
    return "Approved" in str(blocks) and not any(b.get("type") == "actions" for b in blocks)


async def test_frozen_before_parking_posts_one_prompt_showing_the_decision(service, worker, slack):  # noqa: F811
    await _ready(worker)
    with frozen(worker) as procs:
        assert all(p.status() == psutil.STATUS_STOPPED for p in procs)
        approval = await park(service)
        result = await service.vote(approval.id, DANA, "approve")
        assert result.approval.status is Status.APPROVED
        decided = result.approval
        await asyncio.sleep(FROZEN_SECONDS)
        # Nothing reached Slack while the worker was frozen.
        assert slack.count("chat.postMessage") == 0
        assert await service.approvals.approval_message(approval.id) is None

    async def prompt_shows_decision() -> bool:
        prompts = slack.prompts_for(approval.id)
        return len(prompts) == 1 and _shows_decision(prompts[0])

    await until(prompt_shows_decision, 25, "the prompt showing the decision after SIGCONT")
    await asyncio.sleep(QUIET_SECONDS)

    [prompt] = slack.prompts_for(approval.id)
    assert _shows_decision(prompt), prompt.get("blocks")
    assert slack.count("chat.postMessage") == 1
    assert await service.approvals.approval_message(approval.id) == ("C_APPROVALS", prompt["ts"])
    # Every chat.update went to that one message.
    assert {c.args.get("ts") for c in slack.calls_to("chat.update")} <= {prompt["ts"]}

    after = await service.get(approval.id)
    assert after.status is Status.APPROVED
    assert [(v.voter, v.choice) for v in after.votes] == [(DANA.principal, "approve")]
    assert after.decided_by == decided.decided_by == (DANA.principal,)
    assert after.decided_at == decided.decided_at


async def test_frozen_after_posting_updates_the_prompt_once(service, worker, slack):  # noqa: F811
    await _ready(worker)
    approval = await park(service)
    channel, ts = await until(lambda: service.approvals.approval_message(approval.id), 20, "the prompt")
    [posted] = slack.prompts_for(approval.id)
    assert posted["ts"] == ts and channel == "C_APPROVALS"
    assert any(b.get("type") == "actions" for b in posted["blocks"]), "a pending prompt has buttons"
    updates_before = slack.count("chat.update")

    with frozen(worker):
        result = await service.vote(approval.id, DANA, "approve")
        assert result.approval.status is Status.APPROVED
        await asyncio.sleep(FROZEN_SECONDS)
        assert slack.count("chat.update") == updates_before  # frozen: nothing sent
    resumed = time.monotonic()

    async def updated() -> bool:
        return slack.count("chat.update") > updates_before

    await until(updated, 15, "chat.update after SIGCONT")
    took = time.monotonic() - resumed
    await asyncio.sleep(QUIET_SECONDS)

    updates = slack.calls_to("chat.update")[updates_before:]
    assert len(updates) == 1, f"{len(updates)} chat.update calls after SIGCONT"
    assert updates[0].args.get("ts") == ts and updates[0].args.get("channel") == channel
    assert "Approved" in str(updates[0].args.get("blocks"))
    [prompt] = slack.prompts_for(approval.id)
    assert prompt["ts"] == ts and _shows_decision(prompt)
    assert slack.count("chat.postMessage") == 1
    assert took < 15
    assert (await service.get(approval.id)).status is Status.APPROVED
