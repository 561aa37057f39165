"""Votes that change nothing, on both store backends: a repeated vote still returns the
request unchanged (a retried call is harmless), and `repeated_vote` / `AlreadyDecided` say to
the person what happened: decided by whom and when, or already voted while a quorum waits."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.approvals.model import Voter
from broker.approvals.service import AlreadyDecided, AlreadyVoted, ApprovalService, Requester, repeated_vote
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from tests.broker.store.store_backends import backend_url, clock, store  # noqa: F401

DANA = Voter("person:dana@example.com", ("dba",), "api")
SAM = Voter("person:sam@example.com", ("dba",))
BOT = Requester("agent:bot", ("ai-agents",))


async def _park(service: ApprovalService, sql: str = "delete from t"):
    return await service.park_statement(
        session_id="s1", requester=BOT, resource="demo", sql=sql, rule="agent-safe/write-without-where", risk="x"
    )


async def test_a_repeat_after_the_decision_names_who_decided_and_when(store, clock):  # noqa: F811
    service = ApprovalService(store.approvals, ApprovalSettings(default_approvers=["dba"]))
    parked = await _park(service)
    assert repeated_vote(await service.vote(parked.id, DANA, "approve"), DANA) is None  # counted
    again = await service.vote(parked.id, DANA, "approve")
    assert not again.counted and len(again.approval.votes) == 1
    told = repeated_vote(again, DANA)
    assert isinstance(told, AlreadyDecided) and told.code == "not_pending"
    assert told.message == (
        f"request {parked.id} was already approved by person:dana@example.com at 2030-01-01 12:00:00 UTC"
    )
    clock.advance(timedelta(minutes=1))
    with pytest.raises(AlreadyDecided, match="already approved by person:dana@example.com at 2030-01-01 12:00:00"):
        await service.vote(parked.id, SAM, "deny", reason="too late")


async def test_expired_and_cancelled_requests_say_so(store, clock):  # noqa: F811
    service = ApprovalService(store.approvals, ApprovalSettings(default_approvers=["dba"]))
    stale = await _park(service)
    clock.advance(timedelta(hours=2))
    assert [a.id for a in await service.expire_due()] == [stale.id]
    with pytest.raises(AlreadyDecided, match="already expired unanswered at 2030-01-01 14:00:00 UTC"):
        await service.vote(stale.id, DANA, "approve")
    gone = await _park(service, "delete from u")
    await service.cancel(gone.id, reason="the session ended")
    with pytest.raises(AlreadyDecided, match=r"already cancelled at .* \(the session ended\)"):
        await service.vote(gone.id, DANA, "approve")


async def test_a_second_vote_while_a_quorum_waits_is_already_voted(store):  # noqa: F811
    rule = ApprovalRuleSettings(approvers=["dba"], quorum=2)
    service = ApprovalService(store.approvals, ApprovalSettings(rules=[rule]))
    parked = await _park(service)
    await service.vote(parked.id, DANA, "approve")
    told = repeated_vote(await service.vote(parked.id, DANA, "approve"), DANA)
    assert isinstance(told, AlreadyVoted) and told.code == "already_voted"
    assert "you already voted to approve" in told.message and "1 more approval from another approver" in told.message
