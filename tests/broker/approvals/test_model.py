"""The approvals state machine as pure functions: every rule a vote must pass."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.approvals.model import (
    Approval,
    NotAnApprover,
    NotPending,
    ReasonRequired,
    Scope,
    ScopeNotAllowed,
    SelfApproval,
    Status,
    Voter,
    cancel,
    cast_vote,
    covers,
    expire,
)

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
DANA = Voter("person:dana@example.com", ("dba",))
SAM = Voter("person:sam@example.com", ("dba", "sre"))
DEV = Voter("person:dev@example.com", ("developers",))


def approval(**kw) -> Approval:
    base = Approval(
        id="a1", kind="statement", status=Status.PENDING, requester="agent:bot", requester_groups=("ai-agents",),
        owner="person:olga@example.com", resource="prod", created_at=T0, expires_at=T0 + timedelta(hours=1),
        approver_groups=("dba",), session_id="s1", sql="delete from t", statement_hash="h1", fingerprint="f1",
        scopes=(Scope.ONCE, Scope.SESSION, Scope.FINGERPRINT),
    )
    return replace(base, **kw)


def test_one_approval_of_quorum_one_approves():
    result = cast_vote(approval(), DANA, "approve", now=T0)
    assert result.counted and result.decided
    assert result.approval.status is Status.APPROVED
    assert result.approval.decided_by == (DANA.principal,) and result.approval.scope is Scope.ONCE


def test_quorum_of_two_needs_two_different_people():
    first = cast_vote(approval(quorum=2), DANA, "approve", now=T0)
    assert first.approval.status is Status.PENDING and not first.decided
    again = cast_vote(first.approval, DANA, "approve", now=T0)  # double click
    assert not again.counted and again.approval is first.approval
    second = cast_vote(first.approval, SAM, "approve", now=T0)
    assert second.approval.status is Status.APPROVED
    assert second.approval.decided_by == (DANA.principal, SAM.principal)


def test_one_denial_decides_even_under_quorum():
    first = cast_vote(approval(quorum=2), DANA, "approve", now=T0)
    denied = cast_vote(first.approval, SAM, "deny", now=T0, reason="wrong table")
    assert denied.approval.status is Status.DENIED and denied.approval.decision_reason == "wrong table"


def test_a_denial_needs_a_reason():
    with pytest.raises(ReasonRequired):
        cast_vote(approval(), DANA, "deny", now=T0, reason="  ")


@pytest.mark.parametrize("who", ["agent:bot", "person:olga@example.com"])
def test_nobody_approves_their_own_request_nor_their_agents(who):
    with pytest.raises(SelfApproval):
        cast_vote(approval(), Voter(who, ("dba",)), "approve", now=T0)


def test_break_glass_self_approval_needs_a_reason_and_is_flagged():
    glass = approval(break_glass=True, quorum=2)
    owner = Voter("person:olga@example.com", ("developers",))
    with pytest.raises(ReasonRequired):
        cast_vote(glass, owner, "approve", now=T0)
    result = cast_vote(glass, owner, "approve", now=T0, reason="prod is down, incident 4711")
    assert result.break_glass and result.approval.status is Status.APPROVED  # quorum does not apply
    assert result.vote is not None and result.vote.break_glass


def test_non_approver_refused():
    with pytest.raises(NotAnApprover):
        cast_vote(approval(), DEV, "approve", now=T0)


def test_votes_after_a_decision_or_expiry_are_refused():
    decided = cast_vote(approval(), DANA, "approve", now=T0).approval
    with pytest.raises(NotPending):
        cast_vote(decided, SAM, "deny", now=T0, reason="late")
    with pytest.raises(NotPending):
        cast_vote(approval(), DANA, "approve", now=T0 + timedelta(hours=2))


def test_scopes_are_limited_by_policy_and_the_narrowest_wins():
    with pytest.raises(ScopeNotAllowed):
        cast_vote(approval(scopes=(Scope.ONCE,)), DANA, "approve", now=T0, scope="session")
    with pytest.raises(ScopeNotAllowed):
        cast_vote(approval(), DANA, "approve", now=T0, scope="forever")
    first = cast_vote(approval(quorum=2), DANA, "approve", now=T0, scope="fingerprint").approval
    both = cast_vote(first, SAM, "approve", now=T0, scope="session").approval
    assert both.scope is Scope.SESSION and both.covers_until is None


def test_expire_and_cancel_only_from_pending():
    pending = approval()
    with pytest.raises(NotPending):
        expire(pending, now=T0)  # not due yet
    expired = expire(pending, now=T0 + timedelta(hours=1))
    assert expired.status is Status.EXPIRED and "60 min" in (expired.decision_reason or "")
    with pytest.raises(NotPending):
        cancel(expired, now=T0, reason="gone")
    assert cancel(pending, now=T0, reason="client left").status is Status.CANCELLED


def test_what_an_approval_covers():
    kw = dict(session_id="s1", statement_hash="h1", fingerprint="f1", requester="agent:bot", resource="prod", now=T0)
    once = cast_vote(approval(), DANA, "approve", now=T0).approval
    assert covers(once, **kw)
    assert not covers(replace(once, used=1), **kw)  # spent
    assert not covers(once, **{**kw, "session_id": "s2"})
    assert not covers(once, **{**kw, "statement_hash": "h2"})
    assert not covers(once, **{**kw, "requester": "agent:other"})
    session = cast_vote(approval(), DANA, "approve", now=T0, scope="session").approval
    assert covers(replace(session, used=5), **kw)
    window = cast_vote(approval(), DANA, "approve", now=T0, scope="fingerprint").approval
    assert covers(window, **{**kw, "session_id": "s9", "statement_hash": "h9"})
    assert not covers(window, **{**kw, "now": T0 + timedelta(minutes=16)})
    assert not covers(cast_vote(approval(), DANA, "deny", now=T0, reason="no").approval, **kw)


@given(st.lists(st.tuples(st.sampled_from([DANA, SAM, DEV]), st.sampled_from(["approve", "deny"])), max_size=8))
def test_any_vote_sequence_ends_in_at_most_one_decision(votes):
    state = approval(quorum=2)
    decisions = 0
    for voter, choice in votes:
        try:
            result = cast_vote(state, voter, choice, now=T0, reason="r")
        except (NotPending, NotAnApprover):
            continue
        decisions += result.decided
        state = result.approval
    assert decisions <= 1
    assert len({v.voter for v in state.votes}) == len(state.votes)  # one vote per person
    if state.status is Status.APPROVED:
        assert len(state.approvals) >= 2
