"""`jitgate mcp`: an MCP server through which an agent uses the gateway.

The server is a client of the proxy like any other: every `query` travels the wire with the
agent's own gateway token, so policy, masking, parking, recording and the Vault credential
apply exactly as for psql. It never holds a database credential. See `broker.mcp.server`.
"""
