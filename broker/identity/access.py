"""The access policy: which groups may get which role on which resource, and on what terms.

Pure: `decide(principal, resource, role, ttl)` looks only at the configured rules. A rule
matches when the principal is in one of its groups, the resource is listed (or `*`) and the
role is listed. Among matching rules an auto-granting one wins (the requester gets access
without waiting when any rule allows it); otherwise the request needs approval by the union
of the matching rules' approver groups. No matching rule: denied. The granted lifetime is the
requested one capped at the rule's `max_ttl`, never silently extended.

Agent rules (`access.agent_rules`) come first and only ever take away: an agent principal
whose id matches one of a rule's `agents` patterns is denied the rule's `deny_roles` on its
resources, whatever groups it (or the person it acts for) is in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Literal

from broker.identity.oidc import Principal
from broker.identity.settings import AccessRuleSettings, AgentRuleSettings

Outcome = Literal["grant", "approval", "deny"]


@dataclass(frozen=True, slots=True)
class AccessDecision:
    outcome: Outcome
    reason: str
    ttl: timedelta = timedelta(0)
    reusable: bool = False
    approvers: tuple[str, ...] = ()
    rule: int | None = None  # index of the deciding rule in `access.rules`


def _matches(rule: AccessRuleSettings, groups: set[str], resource: str, role: str) -> bool:
    return (
        bool(groups.intersection(rule.groups))
        and (resource in rule.resources or "*" in rule.resources)
        and role in rule.roles
    )


def _agent_refusal(
    agent_rules: Sequence[AgentRuleSettings], principal: Principal, resource: str, role: str
) -> AccessDecision | None:
    if principal.kind != "agent":
        return None
    for index, rule in enumerate(agent_rules):
        if (
            role in rule.deny_roles
            and (resource in rule.resources or "*" in rule.resources)
            and any(fnmatchcase(principal.id, pattern) for pattern in rule.agents)
        ):
            return AccessDecision(
                "deny",
                f"agent rule {index} forbids role {role!r} on {resource!r} to {principal.id}"
                f"{f' (acting for {principal.owner_id})' if principal.owner_id else ''}",
            )
    return None


def decide(
    rules: Sequence[AccessRuleSettings],
    principal: Principal,
    resource: str,
    role: str,
    ttl: timedelta,
    agent_rules: Sequence[AgentRuleSettings] = (),
) -> AccessDecision:
    refusal = _agent_refusal(agent_rules, principal, resource, role)
    if refusal is not None:
        return refusal
    groups = set(principal.groups)
    matching = [(i, r) for i, r in enumerate(rules) if _matches(r, groups, resource, role)]
    if not matching:
        return AccessDecision(
            "deny", f"no access rule gives groups {sorted(groups)} role {role!r} on {resource!r}"
        )
    auto = [(i, r) for i, r in matching if r.approval == "auto"]
    if auto:
        # Of several auto rules, the one allowing the longest lifetime serves the request best.
        index, rule = max(auto, key=lambda ir: ir[1].max_ttl_delta)
        return AccessDecision(
            "grant",
            f"auto-granted by access rule {index}",
            ttl=min(ttl, rule.max_ttl_delta),
            reusable=rule.reusable,
            rule=index,
        )
    index, rule = max(matching, key=lambda ir: ir[1].max_ttl_delta)
    approvers = tuple(dict.fromkeys(g for _, r in matching for g in r.approvers))
    return AccessDecision(
        "approval",
        f"access rule {index} requires approval by {', '.join(approvers) or 'an administrator'}",
        ttl=min(ttl, rule.max_ttl_delta),
        reusable=rule.reusable,
        approvers=approvers,
        rule=index,
    )
