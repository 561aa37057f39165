"""The masking layer's own say on a verdict: a write that would store values derived from a
masked column under a name the masking rules do not mask (to be read back unmasked later:
``create table x as select reverse(api_key) k ...``) goes to review.

The policy reports what each statement stores elsewhere (`Verdict.stored`, from the parse
tree); whether a source is masked is the resource's masking configuration's call. The proxy
applies this to every allowed statement that stores something; `jitgate policy check` applies
it with the default masking rules, so both show the same decision.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

from broker.policy.model import Decision, Verdict

RULE = "masking/stored-unmasked"


class StoredChecker(Protocol):
    def exposed(self, stored: Any) -> list[str]: ...


def review_stored(verdict: Verdict, masker: StoredChecker | None) -> Verdict:
    """`verdict`, or a review of it when it stores masked values under unmasked names."""
    if not verdict.stored or verdict.decision is not Decision.ALLOW or masker is None:
        return verdict
    exposed = masker.exposed(verdict.stored)
    if not exposed:
        return verdict
    reason = "it writes values derived from masked columns where later reads are not masked: " + "; ".join(exposed)
    return replace(verdict, decision=Decision.REVIEW, rule=RULE, reason=reason)
