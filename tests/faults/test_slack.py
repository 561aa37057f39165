"""Slack answers 500 (and 429) while a prompt is posted: the approval is neither lost nor
duplicated. A real `jitgate worker` process (Celery on Redis) posts to the Slack double.

429 alone, and a worker killed in the middle of a post, are covered in
tests/workers/test_worker_process.py; this adds server errors.
"""

from __future__ import annotations

from broker.approvals.model import Status
from tests.workers.test_worker_process import (  # noqa: F401 - fixtures
    DANA,
    config,
    park,
    service,
    slack,
    until,
    worker,
)


async def test_slack_500s_then_429_still_post_one_prompt_and_the_vote_counts(service, worker, slack):  # noqa: F811
    slack.fail_next("chat.postMessage", status=500, times=2)
    slack.fail_next("chat.postMessage", status=429, retry_after=1, times=1)
    approval = await park(service, "delete from orders")
    await until(lambda: service.approvals.approval_message(approval.id), 45, "the prompt after 500s and a 429")
    assert len(slack.prompts_for(approval.id)) == 1
    assert slack.count("chat.postMessage") >= 4
    # The request stayed pending throughout and is decided normally.
    [pending] = [a for a in await service.find(status=Status.PENDING) if a.id == approval.id]
    result = await service.vote(pending.id, DANA, "approve")
    assert result.approval.status is Status.APPROVED
