"""The access policy: which groups may get which role on which resource, and on what terms.

Pure: `decide(principal, resource, role, ttl)` looks only at the configured rules. A rule
matches when the principal is in one of its groups, the resource is listed (or `*`) and the
role is listed. Among matching rules an auto-granting one wins (the requester gets access
without waiting when any rule allows it); otherwise the request needs approval by the union
of the matching rules' approver groups. No matching rule: denied. The granted lifetime is the
requested one capped at the rule's `max_ttl`, never silently extended.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from broker.identity.oidc import Principal
from broker.identity.settings import AccessRuleSettings

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


def decide(
    rules: Sequence[AccessRuleSettings], principal: Principal, resource: str, role: str, ttl: timedelta
) -> AccessDecision:
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
