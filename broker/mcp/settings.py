"""The `mcp:` section of the configuration (what `jitgate mcp` connects to and how much it
returns). Kept free of `broker.config` imports so that `broker.config` can embed it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class McpSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gateway_host: str | None = Field(default=None, description="The proxy's host; default proxy.listen_host")
    gateway_port: int | None = Field(
        default=None, ge=1, lt=65536, description="The proxy's port; default proxy.listen_port"
    )
    user: str = Field(default="agent", description="User name sent to the proxy (the token decides who you are)")
    sslmode: Literal["disable", "prefer", "require"] = "prefer"
    resources: list[str] = Field(
        default_factory=list, description="Resources offered to the agent; empty: every configured resource"
    )
    api_url: str | None = Field(
        default=None, description="Broker API, for request_access and approval details (bearer: JITGATE_TOKEN)"
    )
    intent: str | None = Field(default=None, description="Intent used when a tool call states none")
    max_rows: int = Field(default=200, ge=1, le=100_000, description="Rows returned per query at most")
    max_bytes: int = Field(
        default=256 * 1024, ge=1024, le=64 * 1024 * 1024, description="JSON bytes of rows returned per query at most"
    )
    max_session_rows: int | None = Field(
        default=None, ge=1, description="Rows returned over the server's lifetime at most (egress limit)"
    )
    max_session_bytes: int | None = Field(
        default=None, ge=1024, description="JSON bytes of rows returned over the server's lifetime at most"
    )
    query_timeout_seconds: float = Field(
        default=60.0, gt=0, description="A statement that neither finishes nor parks within this is cancelled"
    )
    connections_per_resource: int = Field(
        default=4, ge=1, le=64, description="Gateway sessions per resource (a parked statement holds one)"
    )
