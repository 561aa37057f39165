"""The `approvals:`, `slack:`, `installation` and `broker_url` settings, and matching a request
to its terms.

Example::

    installation: prod-eu     # names this deployment's queue and channel in a shared Redis
    approvals:
      default_approvers: [dba]          # when no rule matches
      default_timeout: 1h
      reminder_after: 10m               # remind the channel of a request still pending
      escalate_after: 30m               # and post it to slack.escalation_channel
      console_url: https://jitgate.example.com   # links in notices and prompts
      rules:                            # first match wins
        - resources: [prod]
          rules: ["agent-safe/drop*", "agent-safe/truncate*"]   # policy rules (globs)
          approvers: [dba, sre]
          quorum: 2
          timeout: 30m
          scopes: [once]
        - resources: ["*"]
          kinds: [statement]
          approvers: [dba]
          scopes: [once, session, fingerprint]
          fingerprint_window: 15m
          break_glass: true             # the requester may approve with a reason; pages the channel
        - resources: [prod]
          kinds: [access]               # access requests: approvers come from access.rules,
          quorum: 2                     # quorum and timeout from here
    slack:
      bot_token: xoxb-...               # or JITGATE_SLACK__BOT_TOKEN
      signing_secret: ...
      channel: C0123456789
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_core import PydanticCustomError

from broker.approvals.model import Kind, Scope
from broker.durations import parse_duration

_INSTALLATION = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$")


def _check_installation(value: str) -> str:
    if not _INSTALLATION.match(value):
        raise PydanticCustomError(
            "installation",
            "invalid installation name '{value}': use 1-32 lower-case letters, digits and '-' "
            "(it names the Celery queue and the approvals channel in Redis)",
            {"value": value[:40]},
        )
    return value


# Deployments that share one Redis keep apart by this name: their Celery queues, Celery's own
# keys and the decision channel all carry it (`workers.app`, `broker.approvals.bus`).
Installation = Annotated[str, AfterValidator(_check_installation)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)  # ValueError becomes a config error naming the key
    return value


class ApprovalRuleSettings(_Section):
    """The terms for requests this rule matches: who approves, how many, for how long."""

    resources: list[str] = Field(default_factory=lambda: ["*"], description="Resource names or globs")
    rules: list[str] = Field(
        default_factory=lambda: ["*"], description="Policy rule names (globs) whose `review` this covers"
    )
    kinds: list[Kind] = Field(default_factory=lambda: list[Kind](["statement"]), description="statement and/or access")
    approvers: list[str] = Field(default_factory=list, description="OIDC groups whose members may approve")
    quorum: int = Field(default=1, ge=1, le=10, description="Approvals needed (one denial decides)")
    timeout: str = Field(default="1h", description="A pending request expires after this")
    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.ONCE, Scope.SESSION],
        description="What an approver may approve: once, session, fingerprint",
    )
    fingerprint_window: str = Field(default="15m", description="How long a `fingerprint` approval lasts")
    break_glass: bool = Field(default=False, description="Allow self-approval with a mandatory reason")

    _durations = field_validator("timeout", "fingerprint_window")(_check_duration)

    @field_validator("scopes")
    @classmethod
    def _some_scope(cls, value: list[Scope]) -> list[Scope]:
        if not value:
            raise ValueError("at least one scope is needed (once)")
        return value


class ApprovalSettings(_Section):
    rules: list[ApprovalRuleSettings] = Field(default_factory=list)
    default_approvers: list[str] = Field(
        default_factory=lambda: ["dba"], description="Approver groups when no rule names any"
    )
    default_timeout: str = "1h"
    reminder_after: str | None = Field(default="10m", description="Remind the channel; null: never")
    escalate_after: str | None = Field(
        default="30m", description="Post to slack.escalation_channel; null: never"
    )
    console_url: str | None = Field(default=None, description="Base URL of the approvals console, for links")
    directory_max_age: str = Field(
        default="30d", description="A Slack approver must have logged in through OIDC within this"
    )
    expiry_check_interval: str = Field(
        default="1s",
        description="How often the worker expires requests past their timeout and publishes it "
        "(the proxy of a parked statement also expires it itself at the deadline)",
    )

    _durations = field_validator(
        "default_timeout", "reminder_after", "escalate_after", "directory_max_age", "expiry_check_interval"
    )(_check_duration)


class SlackSettings(_Section):
    bot_token: SecretStr = Field(description="Bot token (xoxb-...)")
    signing_secret: SecretStr = Field(description="The app's signing secret, to verify requests")
    app_token: SecretStr | None = Field(default=None, description="App-level token (xapp-...) for Socket Mode")
    channel: str = Field(description="Channel id where approval prompts are posted")
    escalation_channel: str | None = Field(default=None, description="Second channel for escalations")
    api_url: str = Field(default="https://slack.com/api/", description="Web API base URL (GovSlack, tests)")
    console_url: str | None = Field(default=None, description="Approvals console base URL for links")


@dataclass(frozen=True, slots=True)
class Terms:
    approvers: tuple[str, ...]
    quorum: int
    timeout: timedelta
    scopes: tuple[Scope, ...]
    fingerprint_window: timedelta
    break_glass: bool


def terms_for(
    settings: ApprovalSettings,
    *,
    kind: Kind,
    resource: str,
    rule: str | None = None,
    approvers: tuple[str, ...] = (),
) -> Terms:
    """The first matching rule's terms; `approvers` (from access rules) win when given."""
    for candidate in settings.rules:
        if kind not in candidate.kinds:
            continue
        if not any(fnmatchcase(resource, pattern) for pattern in candidate.resources):
            continue
        if kind == "statement" and not any(fnmatchcase(rule or "", pattern) for pattern in candidate.rules):
            continue
        return Terms(
            approvers=approvers or tuple(candidate.approvers) or tuple(settings.default_approvers),
            quorum=candidate.quorum,
            timeout=parse_duration(candidate.timeout),
            scopes=tuple(dict.fromkeys(candidate.scopes)) if kind == "statement" else (Scope.ONCE,),
            fingerprint_window=parse_duration(candidate.fingerprint_window),
            break_glass=candidate.break_glass,
        )
    return Terms(
        approvers=approvers or tuple(settings.default_approvers),
        quorum=1,
        timeout=parse_duration(settings.default_timeout),
        scopes=(Scope.ONCE, Scope.SESSION) if kind == "statement" else (Scope.ONCE,),
        fingerprint_window=timedelta(minutes=15),
        break_glass=False,
    )

