"""The Slack app end to end over HTTP: signed requests in, Slack Web API calls out (to the double)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from broker.approvals.model import Approval, Scope, Status
from slackapp.blocks import escape
from slackapp.client import SlackPoster, make_web_client
from slackapp.listeners.commands import USAGE
from slackapp.settings import SlackSettings
from tests.slack_double import SlackDouble
from tests.slack_signing import SignedRequest, SlackSigner
from tests.slackapp.fakes import InMemoryApprovals, InMemoryLedger, make_approval


async def send(http: httpx.AsyncClient, request: SignedRequest) -> httpx.Response:
    return await http.post("/slack/events", content=request.body, headers=request.headers)


async def posted(settings: SlackSettings, approval: Approval) -> tuple[str, str]:
    """Post the prompt the way the worker does, so chat.update has a message to rewrite."""
    poster = SlackPoster(make_web_client(settings), ledger=InMemoryLedger())
    prompt = await poster.post_prompt(approval, settings.channel)
    return prompt.channel, prompt.ts


def click(signer: SlackSigner, user: str, approval: Approval, ts: str, action: str = "jitgate_approve",
          **options: object) -> SignedRequest:
    return signer.block_actions(user_id=user, action_id=action, value=approval.id, channel="C_APPROVALS",
                                message_ts=ts, **options)  # type: ignore[arg-type]


def ephemerals(slack: SlackDouble) -> list[str]:
    return [c.args["text"] for c in slack.calls_to("chat.postEphemeral")]


async def test_url_verification(http: httpx.AsyncClient, signer: SlackSigner) -> None:
    response = await send(http, signer.url_verification("chal-123"))
    assert response.status_code == 200 and response.json() == {"challenge": "chal-123"}


async def test_approve_click_votes_and_updates_the_prompt_in_place(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    started = time.monotonic()
    response = await send(http, click(signer, "U_ALICE", approval, ts))
    assert response.status_code == 200 and time.monotonic() - started < 3
    (update,) = await slack.wait_for_async("chat.update")
    assert update.args["channel"] == "C_APPROVALS" and update.args["ts"] == ts
    assert "Approved* by alice@example.com at <!date^" in json.dumps(update.args["blocks"])
    assert not [b for b in update.args["blocks"] if b["type"] == "actions"]
    assert approvals.votes == [(approval.id, "person:alice@example.com", "approve", None)]
    assert approvals.decided(approval.id).votes[0].via == "slack"
    assert slack.last("users.info").args["user"] == "U_ALICE"
    (message,) = slack.messages("C_APPROVALS")
    assert "Approved" in json.dumps(message["blocks"])


async def test_the_click_is_acked_before_the_work_is_done(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    approvals.vote_delay = 1.0
    started = time.monotonic()
    response = await send(http, click(signer, "U_ALICE", approval, ts))
    assert response.status_code == 200 and time.monotonic() - started < 0.5
    assert approvals.votes == []
    await slack.wait_for_async("chat.update")
    assert len(approvals.votes) == 1


async def test_bad_signature_is_refused_before_anything_runs(
    http: httpx.AsyncClient, slack: SlackDouble, approvals: InMemoryApprovals, signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    response = await send(http, click(signer, "U_ALICE", approval, "1.000001", bad_signature=True))
    assert response.status_code == 401
    stale = click(signer, "U_ALICE", approval, "1.000001", timestamp=time.time() - 6 * 60)
    assert (await send(http, stale)).status_code == 401
    unsigned = await http.post("/slack/events", content=stale.body,
                               headers={"Content-Type": stale.headers["Content-Type"]})
    assert unsigned.status_code == 401
    assert approvals.votes == [] and slack.calls == []


async def test_double_click_counts_once(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval(quorum=2))
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_ALICE", approval, ts))
    await send(http, click(signer, "U_ALICE", approval, ts))
    updates = await slack.wait_for_async("chat.update", 2)
    await slack.wait_for_async("chat.postEphemeral")
    assert len(approvals.votes) == 1 and approvals.decided(approval.id).status is Status.PENDING
    assert "1 of 2 approvals (alice@example.com)" in json.dumps(updates[-1].args["blocks"])
    assert [b for b in updates[-1].args["blocks"] if b["type"] == "actions"]  # still waiting for a second
    assert "already voted" in ephemerals(slack)[0]


async def test_a_click_on_a_decided_request_says_who_decided_it(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_ALICE", approval, ts))
    await slack.wait_for_async("chat.update")
    await send(http, click(signer, "U_ALICE", approval, ts))
    await slack.wait_for_async("chat.postEphemeral")
    (told,) = ephemerals(slack)
    assert told.startswith("Not recorded:") and "already approved by person:alice@example.com" in told, told
    assert len(approvals.votes) == 1


async def test_quorum_of_two_is_reached_by_a_second_approver(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval(quorum=2))
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_ALICE", approval, ts))
    await slack.wait_for_async("chat.update")
    await send(http, click(signer, "U_BOB", approval, ts))
    updates = await slack.wait_for_async("chat.update", 2)
    assert "Approved* by alice@example.com, bob@example.com" in json.dumps(updates[-1].args["blocks"])
    assert approvals.decided(approval.id).status is Status.APPROVED


async def test_non_approver_gets_an_ephemeral_refusal(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_CAROL", approval, ts))
    (refusal,) = await slack.wait_for_async("chat.postEphemeral")
    assert refusal.args["user"] == "U_CAROL" and refusal.args["channel"] == "C_APPROVALS"
    assert "not in an approver group" in refusal.args["text"]
    assert approvals.votes == [] and slack.count("chat.update") == 0


async def test_self_approval_is_refused(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    # Dave is in dba, but the agent asking acts for him.
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_DAVE", approval, ts))
    await slack.wait_for_async("chat.postEphemeral")
    assert "nobody approves their own request" in ephemerals(slack)[0]
    assert approvals.votes == []


async def test_unlinked_slack_users_cannot_vote(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_GHOST", approval, ts))
    await send(http, click(signer, "U_NOMAIL", approval, ts))
    await slack.wait_for_async("chat.postEphemeral", 2)
    assert all("not linked to a jitgate identity" in text for text in ephemerals(slack))
    assert approvals.votes == []


async def test_failures_are_told_to_the_clicker_and_record_nothing(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    slack.fail_next("users.info", status=500)
    await send(http, click(signer, "U_ALICE", approval, ts))
    await slack.wait_for_async("chat.postEphemeral")
    assert "could not say who you are" in ephemerals(slack)[0]

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("store is down")

    approvals.vote = broken  # type: ignore[method-assign]
    await send(http, click(signer, "U_ALICE", approval, ts))
    await slack.wait_for_async("chat.postEphemeral", 2)
    assert "could not be recorded" in ephemerals(slack)[1]
    assert slack.count("chat.update") == 0 and approvals.decided(approval.id).status is Status.PENDING


async def test_approve_for_this_session(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    await send(http, click(signer, "U_ALICE", approval, ts, "jitgate_approve_session"))
    (update,) = await slack.wait_for_async("chat.update")
    assert approvals.decided(approval.id).scope is Scope.SESSION
    assert "Approved for this session* by alice@example.com" in json.dumps(update.args["blocks"])


async def test_click_on_a_decided_request_refreshes_the_stale_prompt(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    approvals.expire(approval.id)
    await send(http, click(signer, "U_ALICE", approval, ts))
    (update,) = await slack.wait_for_async("chat.update")
    assert "Expired" in json.dumps(update.args["blocks"])
    assert "already expired" in ephemerals(slack)[0]


async def test_deny_opens_a_modal_and_the_submission_denies_with_the_reason(
    http: httpx.AsyncClient, slack: SlackDouble, settings: SlackSettings, approvals: InMemoryApprovals,
    signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    _, ts = await posted(settings, approval)
    request = click(signer, "U_ALICE", approval, ts, "jitgate_deny")
    trigger = json.loads(httpx.QueryParams(request.body.decode())["payload"])["trigger_id"]
    assert (await send(http, request)).status_code == 200
    (opened,) = await slack.wait_for_async("views.open")
    assert opened.args["trigger_id"] == trigger
    modal = opened.args["view"]
    assert modal["callback_id"] == "jitgate_deny_modal" and approvals.votes == []

    empty = signer.view_submission(user_id="U_ALICE", view=modal, values={"reason": {"reason_input": {
        "type": "plain_text_input", "value": "   "}}})
    response = await send(http, empty)
    assert response.json() == {"response_action": "errors", "errors": {"reason": "A denial needs a reason."}}

    submit = signer.view_submission(user_id="U_ALICE", view=modal, values={"reason": {"reason_input": {
        "type": "plain_text_input", "value": "not during the <freeze>"}}})
    response = await send(http, submit)
    assert response.status_code == 200 and not response.content  # the modal closes
    (update,) = await slack.wait_for_async("chat.update")
    assert update.args["ts"] == ts
    text = json.dumps(update.args["blocks"])
    assert "*Denied* by alice@example.com" in text and "not during the &lt;freeze&gt;" in text
    assert approvals.votes == [(approval.id, "person:alice@example.com", "deny", "not during the <freeze>")]


async def test_jit_help_list_and_request(
    http: httpx.AsyncClient, slack: SlackDouble, approvals: InMemoryApprovals, signer: SlackSigner,
) -> None:
    waiting = approvals.add(make_approval())
    mine = approvals.add(make_approval("access", requester="person:alice@example.com"))
    url = slack.response_url()

    response = await send(http, signer.slash_command(user_id="U_ALICE", text="help", response_url=url))
    assert response.status_code == 200 and "/jit request" in response.text  # ack(text): the ephemeral answer

    await send(http, signer.slash_command(user_id="U_ALICE", text="list", response_url=url))
    (listing,) = await slack.wait_for_async("response_url")
    assert listing.args["response_type"] == "ephemeral"
    text = json.dumps(listing.args["blocks"])
    assert waiting.id in text and mine.id in text
    buttons = [e["value"] for b in listing.args["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert buttons == [waiting.id] * 3  # her own request has no buttons

    await send(http, signer.slash_command(user_id="U_ALICE", text="request demo readonly 1h debug ticket 7",
                                          response_url=url))
    answers = await slack.wait_for_async("response_url", 2)
    assert approvals.access_requests == [dict(email="alice@example.com", resource="demo", role="readonly",
                                              reason="debug ticket 7", ttl="1h")]
    assert answers[-1].args["text"].startswith("pending approval apr_")

    await send(http, signer.slash_command(user_id="U_ALICE", text="request nowhere readonly 1h x", response_url=url))
    answers = await slack.wait_for_async("response_url", 3)
    assert "Request refused" in answers[-1].args["text"]

    usage = await send(http, signer.slash_command(user_id="U_ALICE", text="request demo", response_url=url))
    assert "Usage: `/jit request &lt;resource&gt; &lt;role&gt; &lt;ttl&gt; &lt;reason&gt;`" in usage.text


@pytest.mark.parametrize("text", ["", "pending", "frobnicate now"])
async def test_jit_alone_or_unknown_answers_with_the_real_usage(
    http: httpx.AsyncClient, slack: SlackDouble, approvals: InMemoryApprovals, signer: SlackSigner, text: str,
) -> None:
    response = await send(http, signer.slash_command(user_id="U_ALICE", text=text, response_url=slack.response_url()))
    assert response.status_code == 200
    assert f"Usage: `/jit {escape(USAGE)}`" in response.text
    assert ("Unknown subcommand" in response.text) is bool(text)
    assert slack.count("users.info") == 0 and approvals.access_requests == []


async def test_jit_for_an_unlinked_user(http: httpx.AsyncClient, slack: SlackDouble, signer: SlackSigner) -> None:
    await send(http, signer.slash_command(user_id="U_GHOST", text="list", response_url=slack.response_url()))
    (answer,) = await slack.wait_for_async("response_url")
    assert "not linked" in answer.args["text"]


async def test_app_home_lists_pending_approvals_and_votes_from_there(
    http: httpx.AsyncClient, slack: SlackDouble, approvals: InMemoryApprovals, signer: SlackSigner,
) -> None:
    approval = approvals.add(make_approval())
    assert (await send(http, signer.app_home_opened(user_id="U_ALICE"))).status_code == 200
    (published,) = await slack.wait_for_async("views.publish")
    assert published.args["user_id"] == "U_ALICE" and published.args["view"]["type"] == "home"
    assert approval.id in json.dumps(published.args["view"]["blocks"])

    home_click = signer.block_actions(user_id="U_ALICE", action_id="jitgate_approve", value=approval.id, home=True,
                                      block_id=f"jitgate_actions:{approval.id}")
    await send(http, home_click)
    published = await slack.wait_for_async("views.publish", 2)
    assert approvals.decided(approval.id).status is Status.APPROVED
    assert approval.id not in json.dumps(published[-1].args["view"]["blocks"])  # no longer pending
