"""Approvals in the store, on SQLite and PostgreSQL: atomic transitions, audit, access grants."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from broker.approvals.model import ApprovalRefused, Status, Voter
from broker.approvals.service import ApprovalService, Requester
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings
from broker.identity.grants import NotCollectable, collect_grant
from broker.identity.oidc import Principal
from tests.broker.store.store_backends import backend_url, clock, store  # noqa: F401

DANA = Voter("person:dana@example.com", ("dba",), "api")
SAM = Voter("person:sam@example.com", ("dba",))
BOT = Requester("agent:bot", ("ai-agents",), owner="person:olga@example.com")


def settings(**kw) -> ApprovalSettings:
    return ApprovalSettings(**kw)


async def park(service: ApprovalService, sql: str = "delete from t", session_id: str = "s1"):
    return await service.park_statement(
        session_id=session_id, requester=BOT, resource="demo", sql=sql, rule="agent-safe/write-without-where",
        risk="DELETE without WHERE", intent="clean up test rows",
    )


async def test_racing_approvers_resolve_to_one_outcome(store):  # noqa: F811
    service = ApprovalService(store.approvals, settings())
    for _ in range(5):
        approval = await park(service)
        results = await asyncio.gather(
            service.vote(approval.id, DANA, "approve"),
            service.vote(approval.id, SAM, "deny", reason="no"),
            return_exceptions=True,
        )
        decided = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, ApprovalRefused)]
        assert len(decided) == 1 and len(refused) == 1 and refused[0].code == "not_pending"
        final = await service.get(approval.id)
        assert final is not None and final.status is decided[0].approval.status
        assert len(final.votes) == 1


async def test_votes_and_transitions_are_audited_in_the_chain(store):  # noqa: F811
    service = ApprovalService(store.approvals, settings(rules=[ApprovalRuleSettings(approvers=["dba"], quorum=2)]))
    approval = await park(service)
    await service.vote(approval.id, DANA, "approve")
    await service.vote(approval.id, DANA, "approve")  # counted once, audited once
    with pytest.raises(ApprovalRefused):
        await service.vote(approval.id, Voter("person:x@example.com", ("developers",)), "approve")
    await service.vote(approval.id, SAM, "approve")
    types = [(r.type, r.data.get("approval_id"), r.data.get("status"), r.data.get("approve"), r.data.get("reason"))
             async for r in store.audit.iter_audit() if r.data.get("approval_id") == approval.id]
    assert [t[0] for t in types] == [
        "approval.request", "approval.vote", "approval.vote", "approval.vote", "approval.decide"
    ]
    assert types[2][4].startswith("refused (not_approver)")
    assert types[-1][2] == "approved"
    assert (await store.audit.verify_audit()).ok


async def test_expiry_and_session_end(store, clock):  # noqa: F811
    service = ApprovalService(store.approvals, settings(default_timeout="10m"))
    stale = await park(service, "delete from a")
    live = await park(service, "delete from b", session_id="s2")
    clock.advance(timedelta(minutes=11))
    expired = await service.expire_due()
    assert {a.id for a in expired} == {stale.id, live.id}
    assert (await service.get(stale.id)).status is Status.EXPIRED
    again = await park(service, "delete from c", session_id="s3")
    await service.cancel_for_session("s3", reason="the session ended")
    assert (await service.get(again.id)).status is Status.CANCELLED


async def test_decisions_wake_waiters_through_the_bus(store):  # noqa: F811
    service = ApprovalService(store.approvals, settings())
    approval = await park(service)
    waiting = asyncio.create_task(service.wait(approval.id, 30))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await service.vote(approval.id, DANA, "approve")
    final = await asyncio.wait_for(waiting, 5)
    assert final.status is Status.APPROVED


async def test_access_request_approved_then_collected_once(store):  # noqa: F811
    from broker.config import Settings
    from broker.identity.grants import request_access
    from broker.identity.settings import AccessRuleSettings, AccessSettings

    cfg = Settings(
        access=AccessSettings(
            rules=[AccessRuleSettings(groups=["developers"], resources=["demo"], roles=["readwrite"],
                                      approvers=["dba"])]
        )
    )
    service = ApprovalService(store.approvals, cfg.approvals)
    olga = Principal(subject="olga", issuer="https://idp", email="olga@example.com", groups=("developers",))
    repos = {"tokens": store.tokens, "access": store.access}
    result = await request_access(
        cfg, olga, **repos, resource="demo", role="readwrite", reason="fix ticket 12", ttl=timedelta(minutes=30),
        approvals=service,
    )
    assert result.request.status == "pending" and result.token is None
    approval = await service.get(result.request.id)
    assert approval is not None and approval.kind == "access" and approval.approver_groups == ("dba",)
    with pytest.raises(NotCollectable):
        await collect_grant(olga, result.request.id, **repos)
    with pytest.raises(ApprovalRefused) as refused:
        await service.vote(approval.id, DANA, "approve", scope="session")
    assert refused.value.code == "scope_not_allowed"
    await service.vote(approval.id, DANA, "approve")
    assert (await store.access.get_access_request(result.request.id)).status == "approved"
    mallory = Principal(subject="m", issuer="https://idp", email="m@example.com", groups=("developers",))
    with pytest.raises(NotCollectable):
        await collect_grant(mallory, result.request.id, **repos)
    collected = await collect_grant(olga, result.request.id, **repos)
    assert collected.token and collected.request.status == "granted"
    grant = await store.tokens.verify_token(collected.token, resource="demo")
    assert grant.principal == olga.id and grant.role == "readwrite"
    with pytest.raises(NotCollectable):
        await collect_grant(olga, result.request.id, **repos)


async def test_directory_maps_emails_to_recent_logins(store, clock):  # noqa: F811
    service = ApprovalService(store.approvals, settings(directory_max_age="7d"))
    dana = Principal(subject="d", issuer="https://idp", email="Dana@Example.com", groups=("dba",))
    await store.approvals.remember_principal(dana)
    voter = await service.voter_for_email("dana@example.com")
    assert voter == Voter("person:Dana@Example.com", ("dba",), "slack")
    assert await service.voter_for_email("nobody@example.com") is None
    clock.advance(timedelta(days=8))
    assert await service.voter_for_email("dana@example.com") is None  # stale: log in again


async def test_metrics_count_requests_votes_and_decision_latency(store):  # noqa: F811
    from broker import metrics

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    service = ApprovalService(store.approvals, settings())
    opened = value("jitgate_approvals_opened_total", kind="statement")
    approved = value("jitgate_approvals_decided_total", kind="statement", status="approved")
    refused = value("jitgate_approval_votes_total", via="api", result="not_approver")
    timed = value("jitgate_approval_seconds_count", status="approved")
    approval = await park(service)
    with pytest.raises(ApprovalRefused):
        await service.vote(approval.id, Voter("person:x@example.com", ("developers",)), "approve")
    await service.vote(approval.id, DANA, "approve")
    assert value("jitgate_approvals_opened_total", kind="statement") == opened + 1
    assert value("jitgate_approval_votes_total", via="api", result="not_approver") == refused + 1
    assert value("jitgate_approvals_decided_total", kind="statement", status="approved") == approved + 1
    assert value("jitgate_approval_seconds_count", status="approved") == timed + 1
