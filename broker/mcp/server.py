"""The MCP tools of `jitgate mcp` (official `mcp` SDK, `MCPServer`).

Tools: `list_resources`, `describe_schema(resource)`, `query(resource, sql, intent)`,
`request_access(resource, role, reason, ttl)`, `approval_status(approval_id)`. Each returns a
JSON object with a `status` (`ok`, `error`, `awaiting_approval`, ...); errors carry the
SQLSTATE, message, detail and hint the gateway sent, so the agent knows which rule fired and
how to ask for access. Transports: stdio (default) and streamable HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from broker.mcp.gateway import GatewayClient

INSTRUCTIONS = (
    "jitgate gives just-in-time, audited access to databases. Every statement goes through the gateway's "
    "policy: reads are allowed (secrets and PII come back masked), dangerous statements are blocked, risky "
    "ones (DELETE without WHERE, DROP, ...) wait for a human approval. State your intent on each query. "
    "A query answered with status 'awaiting_approval' has not run yet: call approval_status with its "
    "approval_id later. A refused statement's 'detail' says which rule fired and 'hint' how to get access."
)


def build_server(gateway: GatewayClient, *, name: str = "jitgate") -> MCPServer:
    @asynccontextmanager
    async def lifespan(_server: MCPServer) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            await gateway.aclose()  # gateway sessions end, parked statements are withdrawn

    server: MCPServer = MCPServer(name, instructions=INSTRUCTIONS, lifespan=lifespan)

    @server.custom_route("/metrics", methods=["GET"], include_in_schema=False)
    async def metrics(_request: Request) -> Response:
        """Prometheus metrics of this process (with --http): queries, rows and bytes returned,
        egress limits hit."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @server.tool()
    async def list_resources() -> dict[str, Any]:
        """The databases reachable through jitgate, and the result limits."""
        return gateway.list_resources()

    @server.tool()
    async def describe_schema(resource: str) -> dict[str, Any]:
        """Tables and columns of a resource (read through the gateway, so policy applies)."""
        return await gateway.describe_schema(resource)

    @server.tool()
    async def query(resource: str, sql: str, intent: str | None = None) -> dict[str, Any]:
        """Run one SQL statement on a resource through the jitgate gateway.

        `intent`: why you run it (recorded in the audit trail and shown to approvers).
        Results are masked and capped (see list_resources). A statement that needs approval
        returns status 'awaiting_approval' with an approval_id instead of waiting.
        """
        return await gateway.query(resource, sql, intent)

    @server.tool()
    async def request_access(resource: str, role: str, reason: str, ttl: str | None = None) -> dict[str, Any]:
        """Ask for a role on a resource (e.g. readonly, readwrite) with a mandatory reason;
        `ttl` like '30m'. Auto-granted access is used by later queries at once."""
        return await gateway.request_access(resource, role, reason, ttl)

    @server.tool()
    async def approval_status(approval_id: str) -> dict[str, Any]:
        """The state of a statement awaiting approval; once decided, its result or error."""
        return await gateway.approval_status(approval_id)

    return server
