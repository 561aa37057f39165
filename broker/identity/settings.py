"""The `oidc:` and `access:` sections of the configuration.

These models live beside the code that reads them; `broker.config.Settings` only embeds them.
Example::

    oidc:
      issuers:
        - issuer: https://login.example.com/            # must equal the token's `iss`
          audience: jitgate                             # the broker's client id
          groups_claim: groups
          group_mapping: {okta-dba: [dba], "repository=acme/app": [ai-agents]}
        - issuer: https://token.actions.githubusercontent.com
          audience: jitgate
          kind: agent                                   # CI workloads are agents
          owner_claim: actor
    access:
      gateway_address: gateway.example.com:6432         # default: proxy.listen_host:port
      rules:
        - groups: [ai-agents]
          resources: [demo]
          roles: [readonly, readwrite]
          approval: auto
          max_ttl: 8h
          reusable: true
        - groups: [developers]
          resources: ["*"]
          roles: [readwrite]
          approval: required
          approvers: [dba]
      agent_rules:                                      # limits on agents, whatever groups say
        - agents: ["agent:ci-*"]                        # principal ids (fnmatch patterns)
          resources: [prod]
          deny_roles: [readwrite]
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.durations import parse_duration

# RS256 and ES256 only: asymmetric, so a public JWKS can never double as an HMAC secret.
Algorithm = Literal["RS256", "ES256"]
ALLOWED_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OidcIssuerSettings(_Section):
    """One trusted OIDC issuer."""

    issuer: str = Field(description="Issuer URL; must equal the tokens' `iss` claim exactly")
    audience: str | list[str] = Field(description="Accepted `aud` value(s): the broker's client id")
    groups_claim: str = Field(default="groups", description="Claim holding the groups (list or string)")
    group_mapping: dict[str, list[str]] = Field(
        default_factory=dict,
        description=(
            "Maps a groups-claim value, or `claim=value` for any string claim, to jitgate "
            "groups. Mapped values are replaced; unmapped groups-claim values pass through."
        ),
    )
    kind: Literal["person", "agent"] = Field(
        default="person", description="What this issuer's subjects are, unless kind_claim says"
    )
    kind_claim: str | None = Field(
        default=None, description="Claim whose value 'agent' or 'person' overrides `kind`"
    )
    owner_claim: str | None = Field(
        default=None, description="For agents: the claim naming the person responsible"
    )
    algorithms: list[Algorithm] = Field(default_factory=lambda: list(ALLOWED_ALGORITHMS))
    leeway_seconds: int = Field(default=30, ge=0, le=300, description="Clock skew allowed on exp/nbf/iat")
    client_id: str | None = Field(
        default=None, description="Client id for `jitgate login` (device flow); default: audience"
    )

    @field_validator("issuer")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()


class OidcSettings(_Section):
    issuers: list[OidcIssuerSettings] = Field(default_factory=list)


class AccessRuleSettings(_Section):
    """Who (groups) may get which roles on which resources, and on what terms."""

    groups: list[str] = Field(min_length=1)
    resources: list[str] = Field(min_length=1, description="Resource names, or '*' for all")
    roles: list[str] = Field(min_length=1)
    approval: Literal["auto", "required"] = "required"
    approvers: list[str] = Field(default_factory=list, description="Groups whose members may approve")
    max_ttl: str = "8h"
    reusable: bool = Field(default=False, description="Token good for many sessions (else one)")

    @field_validator("max_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)  # ValueError becomes a config error naming the key
        return value

    @property
    def max_ttl_delta(self) -> timedelta:
        return parse_duration(self.max_ttl)


class AgentRuleSettings(_Section):
    """Roles an agent may never get on some resources, whatever its (or its owner's) groups say."""

    agents: list[str] = Field(
        min_length=1, description="Agent principal ids, fnmatch patterns: 'agent:ci-*', or 'agent:*' for all agents"
    )
    resources: list[str] = Field(default_factory=lambda: ["*"], description="Resource names, or '*' for all")
    deny_roles: list[str] = Field(min_length=1, description="Roles refused to these agents on these resources")


class AccessSettings(_Section):
    rules: list[AccessRuleSettings] = Field(default_factory=list)
    agent_rules: list[AgentRuleSettings] = Field(
        default_factory=list, description="Per-agent limits, checked before `rules`: a match denies"
    )
    default_ttl: str = "1h"
    gateway_address: str | None = Field(
        default=None, description="host:port clients use to reach the proxy (for DSNs)"
    )

    @field_validator("default_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value
