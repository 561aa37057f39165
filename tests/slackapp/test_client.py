from __future__ import annotations

import time
from dataclasses import replace

import pytest

from broker.approvals.model import Status
from slackapp.client import ESCALATION_EVENT, PROMPT_EVENT, SlackPoster, make_web_client
from slackapp.exceptions import SlackDeliveryError
from slackapp.settings import SlackSettings
from tests.conftest import free_port
from tests.slack_double import BOT_TOKEN, SlackDouble
from tests.slackapp.fakes import make_approval


def poster(settings: SlackSettings, *, attempts: int = 3) -> SlackPoster:
    client = make_web_client(settings, attempts=attempts, backoff=0.01)
    return SlackPoster(client, console_url=settings.console_url, attempts=attempts, backoff=0.01)


async def test_post_prompt_posts_once_with_metadata(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval()
    channel, ts = await poster(settings).post_prompt(approval, "C_APPROVALS")
    assert channel == "C_APPROVALS" and ts
    call = slack.last("chat.postMessage")
    assert call.headers["authorization"] == f"Bearer {BOT_TOKEN}"
    assert call.args["metadata"] == {"event_type": PROMPT_EVENT, "event_payload": {"approval_id": approval.id}}
    assert call.args["blocks"][0]["type"] == "header" and "DELETE" in call.args["text"]
    # A retried Celery task: finds the message instead of posting a second one.
    assert await poster(settings).post_prompt(approval, "C_APPROVALS") == (channel, ts)
    assert slack.count("chat.postMessage") == 1
    history = slack.last("conversations.history").args
    assert history["include_all_metadata"] in (True, "1", "true")
    assert float(history["oldest"]) <= approval.created_at.timestamp()


async def test_lost_answer_does_not_post_twice(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval()
    slack.drop_next("chat.postMessage")
    channel, ts = await poster(settings).post_prompt(approval, "C_APPROVALS")
    assert slack.count("chat.postMessage") == 1
    assert [m["ts"] for m in slack.messages("C_APPROVALS")] == [ts]


async def test_the_look_up_pages_through_a_busy_channel(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval()
    earlier = slack.add_message("C_APPROVALS", "prompt", metadata={
        "event_type": PROMPT_EVENT, "event_payload": {"approval_id": approval.id}})
    for i in range(450):
        slack.add_message("C_APPROVALS", f"chatter {i}")
    assert await poster(settings).post_prompt(approval, "C_APPROVALS") == ("C_APPROVALS", earlier)
    assert slack.count("chat.postMessage") == 0 and slack.count("conversations.history") == 3


async def test_other_approvals_and_escalations_do_not_match(slack: SlackDouble, settings: SlackSettings) -> None:
    first, second = make_approval(), make_approval()
    p = poster(settings)
    _, ts1 = await p.post_prompt(first, "C_APPROVALS")
    _, ts2 = await p.post_prompt(second, "C_APPROVALS")
    assert ts1 != ts2
    _, esc = await p.escalate(first, "C_ESCALATE")
    assert await p.escalate(first, "C_ESCALATE") == ("C_ESCALATE", esc)
    escalations = slack.messages("C_ESCALATE")
    assert len(escalations) == 1 and escalations[0]["metadata"]["event_type"] == ESCALATION_EVENT
    assert slack.count("chat.postMessage") == 3


async def test_rate_limit_retry_after_is_honoured(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    started = time.monotonic()
    _, ts = await poster(settings).post_prompt(make_approval(), "C_APPROVALS")
    assert time.monotonic() - started >= 1.0
    assert slack.count("chat.postMessage") == 2  # the 429, then the post
    assert len(slack.messages("C_APPROVALS")) == 1 and ts


async def test_rate_limit_exhausted_raises_with_retry_after(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.update", status=429, retry_after=0, times=10)
    approval = make_approval()
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(settings, attempts=2).update_prompt(approval, "C_APPROVALS", "1.000001")
    assert caught.value.method == "chat.update" and caught.value.error == "ratelimited"
    assert caught.value.retry_after == 0.0
    assert slack.count("chat.update") == 2  # slack_sdk's two tries; then the task reschedules


async def test_server_error_is_retried_after_a_look_up(slack: SlackDouble, settings: SlackSettings) -> None:
    slack.fail_next("chat.postMessage", status=500)
    approval = make_approval()
    await poster(settings).post_prompt(approval, "C_APPROVALS")
    assert slack.count("chat.postMessage") == 2 and len(slack.messages("C_APPROVALS")) == 1
    assert slack.count("conversations.history") == 2


async def test_permanent_errors_are_not_retried_and_never_show_the_token(slack: SlackDouble) -> None:
    wrong = SlackSettings(bot_token="xoxb-wrong-token", signing_secret="s", channel="C_APPROVALS",
                          api_url=slack.base_url)
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(wrong).post_prompt(make_approval(), "C_APPROVALS")
    assert caught.value.error == "invalid_auth" and caught.value.method == "conversations.history"
    assert slack.count("conversations.history") == 1
    assert "xoxb-wrong-token" not in str(caught.value) and "xoxb-wrong-token" not in repr(wrong)


async def test_unreachable_slack_raises_after_bounded_attempts(settings: SlackSettings) -> None:
    closed = settings.model_copy(update={"api_url": f"http://127.0.0.1:{free_port()}/api/"})
    started = time.monotonic()
    with pytest.raises(SlackDeliveryError) as caught:
        await poster(closed, attempts=2).post_prompt(make_approval(), "C_APPROVALS")
    assert "ClientConnectorError" in caught.value.error
    assert time.monotonic() - started < 5


async def test_update_prompt_rewrites_the_message(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval()
    p = poster(settings)
    channel, ts = await p.post_prompt(approval, "C_APPROVALS")
    await p.update_prompt(replace(approval, status=Status.EXPIRED), channel, ts)
    (message,) = slack.messages("C_APPROVALS")
    assert "Expired" in str(message["blocks"]) and "edited" in message
    assert not [b for b in message["blocks"] if b["type"] == "actions"]


async def test_reminder_goes_to_the_prompt_thread(slack: SlackDouble, settings: SlackSettings) -> None:
    approval = make_approval(quorum=2)
    p = poster(settings)
    channel, ts = await p.post_prompt(approval, "C_APPROVALS")
    reply = await p.post_reminder(approval, channel, ts)
    call = slack.last("chat.postMessage")
    assert call.args["thread_ts"] == ts and reply != ts
    assert "Still waiting for dba: 0 of 2 approvals" in call.args["text"] and "<!date^" in call.args["text"]
    assert [m["ts"] for m in slack.messages("C_APPROVALS") if "thread_ts" not in m] == [ts]
