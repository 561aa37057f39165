"""`jitgate`: the command line, and the composition root that starts the services.

Each command family lives in its own module exposing ``register(app)``.
"""

from __future__ import annotations

import typer

from broker.cli import (
    api_cmd,
    approvals_cmd,
    audit_cmd,
    config_cmd,
    demo_cmd,
    identity_cmd,
    mcp_cmd,
    policy_cmd,
    proxy_cmd,
    sessions_cmd,
    slack_cmd,
    tokens_cmd,
    worker_cmd,
)

app = typer.Typer(
    name="jitgate",
    help="Just-in-time access gateway for AI coding agents (PostgreSQL wire proxy + broker).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

for module in (
    demo_cmd,
    proxy_cmd,
    api_cmd,
    policy_cmd,
    tokens_cmd,
    identity_cmd,
    audit_cmd,
    sessions_cmd,
    approvals_cmd,
    worker_cmd,
    slack_cmd,
    config_cmd,
    mcp_cmd,
):
    module.register(app)


if __name__ == "__main__":  # pragma: no cover
    app()
