"""SlackPoster against the Slack double holding the manifest's scopes: each message is posted
once through the ledger, updated in place afterwards, and the channel history is never read."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta

import pytest

from broker.approvals.model import Scope, Status, Vote
from slackapp.client import BREAK_GLASS, ESCALATION_EVENT, PROMPT, PROMPT_EVENT, SlackPoster, make_web_client
from slackapp.exceptions import SlackDeliveryError
from slackapp.settings import SlackSettings
from tests.conftest import free_port
from tests.slack_double import BOT_TOKEN, SlackDouble, manifest_bot_scopes
from tests.slackapp.fakes import NOW, InMemoryLedger, make_approval


def poster(
    settings: SlackSettings, ledger: InMemoryLedger | None = None, *, attempts: int = 3,
    claim_ttl: timedelta = timedelta(minutes=2),
) -> SlackPoster:
    client = make_web_client(settings, attempts=attempts, backoff=0.01)
    return SlackPoster(client, ledger=ledger or InMemoryLedger(), console_url=settings.console_url,
                       attempts=attempts, backoff=0.01, claim_ttl=claim_ttl)


async def test_the_double_holds_the_manifest_scopes(slack: SlackDouble) -> None:
    assert slack.scopes == frozenset(manifest_bot_scopes())
    assert "channels:history" not in slack.scopes  # least privilege: prompts never read history


async def test_post_prompt_posts_once_then_updates_in_place(slack: SlackDouble, settings: SlackSettings) -> None:
    approval, ledger = make_approval(), InMemoryLedger()
    first = await poster(settings, ledger).post_prompt(approval, "C_APPROVALS")
    assert first.channel == "C_APPROVALS" and first.ts and first.new
    call = slack.last("chat.postMessage")
    assert call.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert call.args["metadata"] == {"event_type": PROMPT_EVENT, "event_payload": {"approval_id": approval.id}}
    assert call.args["blocks"][0]["type"] == "header" and "DELETE" in call.args["text"]
    assert ledger.rows[(approval.id, PROMPT)][:2] == ("C_APPROVALS", first.ts)
    # A redelivered Celery task (a new poster, the same store): updates, never posts again.
    decided = replace(approval, status=Status.EXPIRED)
    again = await poster(settings, ledger).post_prompt(decided, "C_APPROVALS")
    assert (again.channel, again.ts, again.new) == ("C_APPROVALS", first.ts, False)
    assert slack.count("chat.postMessage") == 1 and slack.last("chat.update").args["ts"] == first.ts
    assert "Expired" in str(slack.messages("C_APPROVALS")[0]["blocks"])
    assert slack.count("conversations.history") == 0


async def test_two_deliveries_at_once_post_one_prompt(slack: SlackDouble, settings: SlackSettings) -> None:
    approval, ledger = make_approval(), InMemoryLedger()
    results = await asyncio.gather(
        poster(settings, ledger).post_prompt(approval, "C_APPROVALS"),
        poster(settings, ledger).post_prompt(approval, "C_APPROVALS"),
        return_exceptions=True,
    )
    posted = [r for r in results if not isinstance(r, BaseException)]
    busy = [r for r in results if isinstance(r, SlackDeliveryError)]
    assert len(posted) == 1 and len(busy) == 1 and busy[0].error == "post_in_flight"
    assert slack.count("chat.postMessage") == 1
    # The loser's retry (Celery) finds the recorded prompt and updates it.
    retried = await poster(settings, ledger).post_prompt(approval, "C_APPROVALS")
    assert retried.ts == posted[0].ts and not retried.new and slack.count("chat.update") == 1


async def test_an_answer_lost_on_the_wire_holds_the_claim(slack: SlackDouble, settings: SlackSettings) -> None:
    approval, ledger = make_approval(), InMemoryLedger()
    slack.drop_next("chat.postMessage")
    with pytest.raises(SlackDeliveryError):
        await poster(settings, ledger, claim_ttl=timedelta(seconds=0.3)).post_prompt(approval, "C_APPROVALS")
    assert slack.count("chat.postMessage") == 1 and len(slack.messages("C_APPROVALS")) == 1
    # Slack may have posted: no second post while the claim is fresh ...
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(settings, ledger, claim_ttl=timedelta(seconds=0.3)).post_prompt(approval, "C_APPROVALS")
    assert caught.value.error == "post_in_flight" and slack.count("chat.postMessage") == 1
    # ... and one more, not an endless series, once it is stale (the poster may have died).
    await asyncio.sleep(0.35)
    later = await poster(settings, ledger, claim_ttl=timedelta(seconds=0.3)).post_prompt(approval, "C_APPROVALS")
    assert later.new and slack.count("chat.postMessage") == 2
    assert ledger.rows[(approval.id, PROMPT)][1] == later.ts


async def test_a_server_error_is_retried_and_posts_once(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.postMessage", status=500)
    approval, ledger = make_approval(), InMemoryLedger()
    posted = await poster(settings, ledger).post_prompt(approval, "C_APPROVALS")
    assert slack.count("chat.postMessage") == 2 and len(slack.messages("C_APPROVALS")) == 1
    assert ledger.rows[(approval.id, PROMPT)][1] == posted.ts


async def test_a_timeout_is_not_retried_blindly(slack: SlackDouble, settings: SlackSettings) -> None:
    approval, ledger = make_approval(), InMemoryLedger()
    slow = poster(settings, ledger)
    slow.client.timeout = 1
    slack.delay_next("chat.postMessage", seconds=1.5)
    with pytest.raises(SlackDeliveryError):
        await slow.post_prompt(approval, "C_APPROVALS")
    await asyncio.sleep(0.6)  # the double finishes the post the client gave up on
    assert slack.count("chat.postMessage") == 1 and len(slack.messages("C_APPROVALS")) == 1
    assert ledger.rows[(approval.id, PROMPT)][1] is None  # claimed, unposted as far as we know


async def test_a_refusal_releases_the_claim_for_the_next_delivery(
    slack: SlackDouble, settings: SlackSettings,
) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=0, times=2)
    approval, ledger = make_approval(), InMemoryLedger()
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(settings, ledger, attempts=2).post_prompt(approval, "C_APPROVALS")
    assert caught.value.error == "ratelimited" and (approval.id, PROMPT) not in ledger.rows
    posted = await poster(settings, ledger).post_prompt(approval, "C_APPROVALS")
    assert posted.new and len(slack.messages("C_APPROVALS")) == 1


async def test_escalation_and_other_approvals_are_their_own_messages(
    slack: SlackDouble, settings: SlackSettings,
) -> None:
    first, second, ledger = make_approval(), make_approval(), InMemoryLedger()
    p = poster(settings, ledger)
    ts1 = (await p.post_prompt(first, "C_APPROVALS")).ts
    ts2 = (await p.post_prompt(second, "C_APPROVALS")).ts
    assert ts1 != ts2
    esc = await p.escalate(first, "C_ESCALATE")
    assert await p.escalate(first, "C_ESCALATE") == replace(esc, new=False)
    escalations = slack.messages("C_ESCALATE")
    assert len(escalations) == 1 and escalations[0]["metadata"]["event_type"] == ESCALATION_EVENT
    assert slack.count("chat.postMessage") == 3


async def test_break_glass_pages_once_and_only_for_a_self_approval(
    slack: SlackDouble, settings: SlackSettings,
) -> None:
    ledger = InMemoryLedger()
    plain = make_approval()
    assert await poster(settings, ledger).page_break_glass(plain, "C_APPROVALS") is None
    vote = Vote("person:dave@example.com", "approve", NOW, "prod down, incident 12", Scope.ONCE, True, "slack")
    glass = replace(plain, votes=(vote,))
    page = await poster(settings, ledger).page_break_glass(glass, "C_APPROVALS")
    assert page is not None and page.new
    again = await poster(settings, ledger).page_break_glass(glass, "C_APPROVALS")
    assert again is not None and not again.new and slack.count("chat.update") == 0
    (message,) = slack.messages("C_APPROVALS")
    assert "<!channel> Break-glass" in message["text"] and "incident 12" in message["text"]
    assert ledger.rows[(glass.id, BREAK_GLASS)][1] == page.ts


async def test_rate_limit_retry_after_is_honoured(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    started = time.monotonic()
    posted = await poster(settings).post_prompt(make_approval(), "C_APPROVALS")
    assert time.monotonic() - started >= 1.0
    assert slack.count("chat.postMessage") == 2  # the 429, then the post
    assert len(slack.messages("C_APPROVALS")) == 1 and posted.ts


async def test_rate_limit_exhausted_raises_with_retry_after(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.update", status=429, retry_after=0, times=10)
    approval = make_approval()
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(settings, attempts=2).update_prompt(approval, "C_APPROVALS", "1.000001")
    assert caught.value.method == "chat.update" and caught.value.error == "ratelimited"
    assert caught.value.retry_after == 0.0
    assert slack.count("chat.update") == 2  # slack_sdk's two tries; then the task reschedules


async def test_permanent_errors_are_not_retried_and_never_show_the_token(slack: SlackDouble) -> None:
    wrong = SlackSettings(bot_token="xoxb-wrong-token", signing_secret="s", channel="C_APPROVALS",
                          api_url=slack.base_url)
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(wrong).post_prompt(make_approval(), "C_APPROVALS")
    assert caught.value.error == "invalid_auth" and caught.value.method == "chat.postMessage"
    assert slack.count("chat.postMessage") == 1
    assert "xoxb-wrong-token" not in str(caught.value) and "xoxb-wrong-token" not in repr(wrong)


async def test_a_token_without_chat_write_gets_missing_scope(settings: SlackSettings) -> None:
    with SlackDouble(scopes=("commands", "users:read")) as bare:
        scoped = settings.model_copy(update={"api_url": bare.base_url})
        with pytest.raises(SlackDeliveryError) as caught:
            await poster(scoped).post_prompt(make_approval(), "C_APPROVALS")
    assert caught.value.error == "missing_scope" and bare.messages("C_APPROVALS") == []


async def test_unreachable_slack_raises_after_bounded_attempts(settings: SlackSettings) -> None:
    closed = settings.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}/api/"})
    approval, ledger = make_approval(), InMemoryLedger()
    started = time.monotonic()
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(closed, ledger, attempts=2).post_prompt(approval, "C_APPROVALS")
    assert "ClientConnectorError" in caught.value.error
    assert time.monotonic() - started < 5
    assert (approval.id, PROMPT) not in ledger.rows  # never connected: surely not posted


async def test_reminder_goes_to_the_prompt_thread(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval(quorum=2)
    p = poster(settings)
    prompt = await p.post_prompt(approval, "C_APPROVALS")
    reply = await p.post_reminder(approval, prompt.channel, prompt.ts)
    call = slack.last("chat.postMessage")
    assert call.args["thread_ts"] == prompt.ts and reply != prompt.ts
    assert "Still waiting for dba: 0 of 2 approvals" in call.args["text"] and "<!date^" in call.args["text"]
    assert [m["ts"] for m in slack.messages("C_APPROVALS") if "thread_ts" not in m] == [prompt.ts]
