"""`jitgate approvals list|show|approve|deny|cancel`: deciding without Slack.

The commands call the broker API with your login (`jitgate login`, or `JITGATE_TOKEN`), so
the API's rules apply unchanged: only approvers of a request see and decide it, nobody
decides their own, a denial needs a reason.

    jitgate approvals list [--all] [--json]
    jitgate approvals approve ID [--scope once|session|fingerprint] [--reason TEXT]
    jitgate approvals deny ID --reason TEXT
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from broker.cli.identity_cmd import ApiOption, call_api

approvals_app = typer.Typer(help="List and decide parked statements and access requests.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(approvals_app, name="approvals")


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _call(method: str, path: str, api: str | None, body: dict[str, Any] | None = None) -> Any:
    response, _, _ = call_api(method, path, api, body)
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = None
        if isinstance(detail, dict):
            detail = f"{detail.get('message')} ({detail.get('code')})"
        _fail(f"refused: {detail or f'HTTP {response.status_code}'}", 3 if response.status_code in (403, 409) else 1)
    return response.json()


def _what(a: dict[str, Any]) -> str:
    if a["kind"] == "access":
        return f"access: {a['role']} on {a['resource']}"
    sql = " ".join((a.get("sql") or "").split())
    return sql if len(sql) <= 80 else sql[:77] + "…"


def _left(a: dict[str, Any]) -> str:
    if a["status"] != "pending":
        return a["status"]
    seconds = int((datetime.fromisoformat(a["expires_at"]) - datetime.now(UTC)).total_seconds())
    return f"{max(seconds, 0) // 60}m{max(seconds, 0) % 60:02d}s left"


@approvals_app.command("list")
def list_approvals(
    all_: Annotated[bool, typer.Option("--all", help="Also decided requests")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON array")] = False,
    api: ApiOption = None,
) -> None:
    """Requests you may decide (and your own), pending by default."""
    found = _call("GET", "/v1/approvals" + ("" if all_ else "?status=pending"), api)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("id", "requester", "resource", "what", "rule", "votes", "status")
    for a in found:
        requester = a["requester"] + (f" for {a['owner']}" if a.get("owner") else "")
        table.add_row(
            a["id"], requester, a["resource"], _what(a), a.get("rule") or "", f"{a['approvals']}/{a['quorum']}",
            _left(a),
        )
    Console().print(table)


@approvals_app.command("show")
def show(approval_id: str, api: ApiOption = None) -> None:
    """One request with its votes, as JSON."""
    typer.echo(json.dumps(_call("GET", f"/v1/approvals/{approval_id}", api), indent=2))


@approvals_app.command("approve")
def approve(
    approval_id: str,
    scope: Annotated[str, typer.Option(help="once, session or fingerprint (as the policy allows)")] = "once",
    reason: Annotated[str | None, typer.Option(help="Optional (mandatory for break-glass)")] = None,
    api: ApiOption = None,
) -> None:
    """Approve: the parked statement runs (or the access request is granted) at quorum."""
    a = _call("POST", f"/v1/approvals/{approval_id}/approve", api, {"scope": scope, "reason": reason})
    typer.echo(f"{a['id']}: {a['status']} ({a['approvals']}/{a['quorum']} approvals)")


@approvals_app.command("deny")
def deny(
    approval_id: str,
    reason: Annotated[str, typer.Option(help="Why; the requester sees it")],
    api: ApiOption = None,
) -> None:
    """Deny with a reason: the client gets 42501 with it."""
    if not reason.strip():
        _fail("--reason must not be empty", 2)
    a = _call("POST", f"/v1/approvals/{approval_id}/deny", api, {"reason": reason})
    typer.echo(f"{a['id']}: {a['status']}")


@approvals_app.command("cancel")
def cancel(approval_id: str, api: ApiOption = None) -> None:
    """Withdraw your own pending request."""
    a = _call("POST", f"/v1/approvals/{approval_id}/cancel", api, {})
    typer.echo(f"{a['id']}: {a['status']}")
