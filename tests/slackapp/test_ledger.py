"""The store as the poster's `MessageLedger` (table slack_messages), on SQLite and PostgreSQL:
one claim wins, a posted message is found again, a stale claim is taken over."""

# ruff: noqa: F811

from __future__ import annotations

import asyncio
from datetime import timedelta

from broker.approvals.service import ApprovalService, Requester
from broker.approvals.settings import ApprovalSettings
from broker.store import Store
from slackapp.client import SlackPoster, make_web_client
from slackapp.settings import SlackSettings
from tests.broker.store.store_backends import FakeClock, backend_url, clock, store  # noqa: F401
from tests.slack_double import SlackDouble

STALE = timedelta(minutes=2)


async def park(store: Store) -> str:
    service = ApprovalService(store.approvals, ApprovalSettings())
    approval = await service.park_statement(
        session_id="s1", requester=Requester("person:olga@example.com", ("developers",)), resource="demo",
        sql="delete from t", rule="agent-safe/write-without-where", risk="no WHERE",
    )
    return approval.id


async def test_claim_record_and_find(store: Store, clock: FakeClock) -> None:
    approval_id = await park(store)
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) is None
    # Concurrent deliveries see the claim; the escalation is a message of its own.
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1",
        stale_after=STALE) == ("C1", None)
    assert await store.approvals.claim_slack_message(approval_id, "escalation", channel="C2", stale_after=STALE) is None
    assert await store.approvals.approval_message(approval_id) is None
    await store.approvals.record_slack_message(approval_id, "prompt", channel="C1", ts="17.000100")
    assert await store.approvals.approval_message(approval_id) == ("C1", "17.000100")
    clock.advance(STALE * 10)  # a posted message never goes stale
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) == (
        "C1", "17.000100")
    await store.approvals.release_slack_message(approval_id, "prompt")  # only unposted claims are released
    assert await store.approvals.approval_message(approval_id) == ("C1", "17.000100")


async def test_a_stale_or_released_claim_is_taken_over(store: Store, clock: FakeClock) -> None:
    approval_id = await park(store)
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) is None
    clock.advance(STALE - timedelta(seconds=1))
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1",
        stale_after=STALE) == ("C1", None)
    clock.advance(timedelta(seconds=2))  # the claimant died
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) is None
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1",
        stale_after=STALE) == ("C1", None)
    await store.approvals.release_slack_message(approval_id, "prompt")
    assert await store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) is None


async def test_racing_claims_have_one_winner(store: Store) -> None:
    approval_id = await park(store)
    results = await asyncio.gather(*[
        store.approvals.claim_slack_message(approval_id, "prompt", channel="C1", stale_after=STALE) for _ in range(8)
    ])
    assert results.count(None) == 1 and results.count(("C1", None)) == 7


async def test_the_poster_over_the_store_posts_once(store: Store) -> None:
    approval_id = await park(store)
    approval = await store.approvals.get_approval(approval_id)
    assert approval is not None
    with SlackDouble() as slack:
        settings = SlackSettings(bot_token=slack.bot_token, signing_secret="s", channel="C_APPROVALS",
                                 api_url=slack.base_url)
        results = await asyncio.gather(*[
            SlackPoster(make_web_client(settings), ledger=store.approvals).post_prompt(approval, "C_APPROVALS")
            for _ in range(3)
        ], return_exceptions=True)
        assert slack.count("chat.postMessage") == 1 and len(slack.messages("C_APPROVALS")) == 1
        (posted,) = [r for r in results if not isinstance(r, BaseException) and r.new]
        for other in results:  # the others waited for the claim, or updated the recorded prompt
            assert other is posted or getattr(other, "error", None) == "post_in_flight" or (
                not isinstance(other, BaseException) and other.ts == posted.ts)
        assert await store.approvals.approval_message(approval_id) == ("C_APPROVALS", posted.ts)
        updates = slack.count("chat.update")
        again = await SlackPoster(make_web_client(settings), ledger=store.approvals).post_prompt(approval,
            "C_APPROVALS")
        assert not again.new and again.ts == posted.ts and slack.count("chat.update") == updates + 1
        assert slack.count("chat.postMessage") == 1 and slack.count("conversations.history") == 0


async def test_the_migration_carries_recorded_prompts_over(tmp_path) -> None:
    from sqlalchemy import text

    from broker.store.db import create_engine
    from broker.store.migrate import downgrade, upgrade

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        await upgrade(engine, "0009_session_slots")
        async with engine.begin() as conn:
            for approval_id, channel, ts in (("a1", "C1", "17.000100"), ("a2", None, None)):
                await conn.execute(text(
                    "INSERT INTO approvals (id, kind, status, requester, requester_groups, resource, details, "
                    "approver_groups, quorum, scopes, fingerprint_window_seconds, break_glass, created_at, "
                    "expires_at, decided_by, used, slack_channel, slack_ts) VALUES (:id, 'statement', 'pending', "
                    "'agent:x', '[]', 'demo', '{}', '[\"dba\"]', 1, '[\"once\"]', 0, 0, '2030-01-01 00:00:00', "
                    "'2030-01-01 01:00:00', '[]', 0, :channel, :ts)"
                ), {"id": approval_id, "channel": channel, "ts": ts})
        await upgrade(engine)
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT approval_id, kind, channel, ts FROM slack_messages"))).all()
        assert [tuple(r) for r in rows] == [("a1", "prompt", "C1", "17.000100")]
        await downgrade(engine, "0009_session_slots")
        async with engine.connect() as conn:
            back = (await conn.execute(text("SELECT id, slack_channel, slack_ts FROM approvals ORDER BY id"))).all()
        assert [tuple(r) for r in back] == [("a1", "C1", "17.000100"), ("a2", None, None)]
    finally:
        await engine.dispose()
