"""The `console:` section: the approvals console's OIDC client and its session cookie.

Example::

    console:
      issuer: https://login.example.com/        # default: the first of oidc.issuers
      client_id: jitgate                        # default: that issuer's client_id, else its audience
      redirect_url: https://jitgate.example.com/console/callback   # default: from the request
      cookie_key_file: /etc/jitgate/console.key # default: <data_dir>/console-cookie.key (made 0600)
      session_ttl: 8h                           # never longer than the ID token's own expiry
      admin_groups: [sre]                       # who sees sessions, audit and health;
                                                # default: every approver group in the config
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from broker.durations import parse_duration


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Serve the console under /console on the API")
    issuer: str | None = Field(default=None, description="OIDC issuer to log in with; default: the first configured")
    client_id: str | None = Field(default=None, description="OIDC client id; default: the issuer's client_id/audience")
    redirect_url: str | None = Field(
        default=None, description="Callback URL registered at the issuer; default: <request base>/console/callback"
    )
    cookie_key_file: Path | None = Field(
        default=None, description="HMAC key for the session cookie; default: <data_dir>/console-cookie.key"
    )
    session_ttl: str = Field(default="8h", description="Console session lifetime (capped by the ID token's exp)")
    admin_groups: list[str] | None = Field(
        default=None,
        description="Groups that may see sessions, audit and health; default: all approver groups",
    )

    @field_validator("session_ttl")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def session_ttl_delta(self) -> timedelta:
        return parse_duration(self.session_ttl)
