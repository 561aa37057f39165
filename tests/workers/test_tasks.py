"""The worker's task bodies in-process: reminders, escalation, break-glass paging, audit export."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.approvals.model import Voter
from broker.approvals.service import ApprovalService, Requester
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings, SlackSettings
from broker.config import Settings
from broker.store import Store
from slackapp.client import SlackPoster
from tests.slack_double import SlackDouble
from workers import tasks


@pytest.fixture
def slack():
    with SlackDouble() as double:
        yield double


@pytest.fixture
async def rt(tmp_path: Path, slack: SlackDouble) -> AsyncIterator[tasks.Runtime]:
    settings = Settings(
        data_dir=tmp_path,
        slack=SlackSettings(bot_token=slack.bot_token, signing_secret="s", channel="C_APPROVALS",
                            escalation_channel="C_ESCALATE", api_url=slack.base_url),
        approvals=ApprovalSettings(
            reminder_after="1s", escalate_after="1s",
            rules=[ApprovalRuleSettings(approvers=["dba"], break_glass=True)],
        ),
    )
    store = await Store.open(settings.store_url.get_secret_value())
    poster = SlackPoster.from_settings(settings.slack, ledger=store.approvals)
    service = ApprovalService(store.approvals, settings.approvals)
    yield tasks.Runtime(settings, asyncio.get_running_loop(), store.approvals, store.audit, service, poster)
    await store.close()


async def park(rt: tasks.Runtime, sql: str = "delete from t"):
    return await rt.service.park_statement(
        session_id="s1", requester=Requester("person:olga@example.com", ("developers",)), resource="demo",
        sql=sql, rule="agent-safe/write-without-where", risk="no WHERE",
    )


async def test_reminder_and_escalation_are_sent_once(rt, slack):
    approval = await park(rt)
    assert await tasks._post_or_update(rt, approval.id) == "posted"
    assert await tasks._nudge(rt) == 0  # not due yet
    await asyncio.sleep(1.1)
    assert await tasks._nudge(rt) == 2
    assert await tasks._nudge(rt) == 0  # once each
    channel, ts = await rt.approvals.approval_message(approval.id)
    reminders = [c for c in slack.calls_to("chat.postMessage") if c.args.get("thread_ts") == ts]
    assert len(reminders) == 1 and approval.id in reminders[0].args["text"]
    escalated = slack.prompts_for(approval.id, "C_ESCALATE")
    assert len(escalated) == 1


async def test_break_glass_self_approval_pages_the_channel_once(rt, slack):
    approval = await park(rt, "delete from u")
    await tasks._post_or_update(rt, approval.id)
    await rt.service.vote(approval.id, Voter("person:olga@example.com", ("developers",)), "approve",
                          reason="prod down, incident 12")
    await tasks._post_or_update(rt, approval.id)
    await tasks._post_or_update(rt, approval.id)  # a retried update pages no second time
    pages = [m for m in slack.messages("C_APPROVALS") if "<!channel> Break-glass" in m.get("text", "")]
    assert len(pages) == 1 and "incident 12" in pages[0]["text"]


async def test_nightly_export_writes_the_days_audit(rt):
    await park(rt, "delete from v")
    today = datetime.now(UTC)
    path = await tasks._export(rt, today)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert path.name == f"audit-{today:%Y-%m-%d}.jsonl"
    assert any(r["type"] == "approval.request" and r["data"]["sql"] == "delete from v" for r in lines)
    again = await tasks._export(rt, today)  # idempotent: the same file, rewritten
    assert again == path and len(again.read_text().splitlines()) == len(lines)
    assert (await tasks._export(rt, today - timedelta(days=3))).read_text() == ""
