"""The `slack:` section of the configuration; `broker.config.Settings.slack` embeds it.

Example::

    slack:
      bot_token: xoxb-...                  # scopes: chat:write, users:read, users:read.email,
                                           # commands (infra/slack/manifest.yaml)
      signing_secret: 8f14e45f...          # HTTP mode: verifies every request Slack sends
      app_token: xapp-...                  # Socket Mode instead of a public /slack/events URL
      channel: C0123456789                 # where approval prompts are posted
      escalation_channel: C0987654321      # where unanswered prompts are escalated
      api_url: https://slack.com/api/      # GovSlack: https://slack-gov.com/api/
      console_url: https://jitgate.example.com   # "full statement" links

Tokens are `SecretStr`: repr, str and JSON dumps show `**********`; only the Slack client
reads them, with `get_secret_value()`.

The functions of this package take any object with these attributes (`SlackConfig`), so the
broker can keep its own copy of the section (`broker.approvals.settings.SlackSettings`:
`broker` imports nothing from `slackapp`) without a conversion.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class SlackConfig(Protocol):
    """What the Slack side reads from its configuration section."""

    @property
    def bot_token(self) -> SecretStr: ...
    @property
    def signing_secret(self) -> SecretStr: ...
    @property
    def app_token(self) -> SecretStr | None: ...
    @property
    def channel(self) -> str: ...
    @property
    def escalation_channel(self) -> str | None: ...
    @property
    def api_url(self) -> str: ...
    @property
    def console_url(self) -> str | None: ...


def api_base_url(url: str) -> str:
    """slack_sdk joins base URL and method name by concatenation: the URL must end in `/`."""
    return url if url.endswith("/") else url + "/"


class SlackSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bot_token: SecretStr = Field(description="Bot token (xoxb-...)")
    signing_secret: SecretStr = Field(description="Signing secret: verifies requests from Slack")
    app_token: SecretStr | None = Field(default=None, description="App-level token (xapp-...) for Socket Mode")
    channel: str = Field(description="Channel id where approval prompts are posted")
    escalation_channel: str | None = Field(default=None, description="Channel id for escalations")
    api_url: str = Field(default="https://slack.com/api/", description="Slack Web API base URL")
    console_url: str | None = Field(default=None, description="Base URL of the approvals console")

    @field_validator("api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        return api_base_url(value)

    @field_validator("console_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else value

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token (xoxb-...)")
        return value

    @field_validator("app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token (xapp-...)")
        return value
