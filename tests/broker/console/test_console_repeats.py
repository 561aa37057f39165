"""Console votes that change nothing are not shown as a success: "already approved by X at
T", or "you already voted" while a quorum of two waits."""

from __future__ import annotations

import html

from broker.approvals.model import Status
from broker.approvals.settings import ApprovalRuleSettings
from tests.broker.console.test_console import csrf_of, env, park  # noqa: F401 - env is a fixture


async def test_approving_a_decided_request_says_who_decided_it(env):  # noqa: F811
    parked = await park(env.service)
    async with env.as_person("dana", ("dba",)) as dana:
        token = csrf_of((await dana.get("/console/")).text)
        first = await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})
        assert first.status_code == 303
        again = await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})
        assert again.status_code == 409
        assert "already approved by person:dana@example.com at " in html.unescape(again.text)
    async with env.as_person("sam", ("dba",)) as sam:
        token = csrf_of((await sam.get("/console/")).text)
        late = await sam.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})
        assert late.status_code == 409 and "already approved by person:dana@example.com" in html.unescape(late.text)


async def test_a_second_vote_while_the_quorum_waits_says_already_voted(env):  # noqa: F811
    env.service.settings.rules.append(ApprovalRuleSettings(approvers=["dba"], quorum=2))
    parked = await park(env.service)
    assert parked.quorum == 2
    async with env.as_person("dana", ("dba",)) as dana:
        token = csrf_of((await dana.get("/console/")).text)
        assert (await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})).status_code == 303
        again = await dana.post(f"/console/approvals/{parked.id}/approve", data={"csrf": token})
        assert again.status_code == 409 and "you already voted to approve" in html.unescape(again.text)
    assert (await env.service.get(parked.id)).status is Status.PENDING
