"""`jitgate approvals list|show|approve|deny|cancel`: deciding without Slack.

The commands call the broker API with your login (`jitgate login`, or `JITGATE_TOKEN`), so
the API's rules apply unchanged: only approvers of a request see and decide it, nobody
decides their own, a denial needs a reason.

    jitgate approvals list [--all] [--json]
    jitgate approvals approve ID [--scope once|session|fingerprint] [--reason TEXT]
    jitgate approvals deny ID --reason TEXT

`list` prints ids whole at any terminal width. Every command taking an ID also takes a unique
prefix of at least 8 characters (`jitgate approvals approve 3f2a9c1e`): an ambiguous prefix
lists the requests it matches and exits 2, an unknown id exits 1. A vote that changes nothing
(the request was already decided, or your vote is already counted) exits 3 and says so.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import quote

import typer
from rich.console import Console
from rich.table import Column, Table

from broker.api.approvals import MIN_PREFIX
from broker.cli.identity_cmd import ApiOption, call_api

approvals_app = typer.Typer(help="List and decide parked statements and access requests.", no_args_is_help=True)


IdArg = Annotated[
    str, typer.Argument(metavar="ID", help=f"The request's id, or a unique prefix of it ({MIN_PREFIX}+ characters)")
]


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


_FULL_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: Below this width the table would squeeze every column but the id to a few letters: one
#: block per request instead.
_TABLE_WIDTH = 120


def _resolve(approval_id: str, api: str | None) -> str:
    """The full id of the request `approval_id` names: itself when it is a whole id, else the
    one visible request whose id starts with it."""
    wanted = approval_id.strip().lower()
    if _FULL_ID.fullmatch(wanted):
        return wanted
    if len(wanted) < MIN_PREFIX or not re.fullmatch(r"[0-9a-f-]+", wanted):
        _fail(f"{approval_id!r} is not an approval id: give the id or at least its first {MIN_PREFIX} characters", 2)
    found = _call("GET", f"/v1/approvals?id_prefix={quote(wanted)}", api)
    if not found:
        _fail(f"no approval request you may see has an id starting with {wanted}")
    if len(found) > 1:
        candidates = "\n".join(f"  {a['id']}  {a['status']}  {_what(a)}" for a in found)
        _fail(f"{wanted} is ambiguous; it starts the ids of:\n{candidates}\ngive more characters", 2)
    full: str = found[0]["id"]
    return full


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
    console = Console()
    if console.width < _TABLE_WIDTH:
        for a in found:
            # The id alone at the start of its line, never cut: it is what the other commands take.
            console.print(a["id"], no_wrap=True, overflow="ignore", crop=False, highlight=False)
            console.print(
                f"  {_requester(a)} on {a['resource']}: {a['approvals']}/{a['quorum']} approvals, {_left(a)}",
                f"  {_what(a)}" + (f"  [rule {a['rule']}]" if a.get("rule") else ""),
                sep="\n", markup=False, highlight=False,
            )
        return
    table = Table(
        Column("id", no_wrap=True, min_width=36), "requester", "resource", "what", "rule", "votes", "status"
    )
    for a in found:
        table.add_row(
            a["id"], _requester(a), a["resource"], _what(a), a.get("rule") or "", f"{a['approvals']}/{a['quorum']}",
            _left(a),
        )
    console.print(table)


def _requester(a: dict[str, Any]) -> str:
    return str(a["requester"]) + (f" for {a['owner']}" if a.get("owner") else "")


@approvals_app.command("show")
def show(approval_id: IdArg, api: ApiOption = None) -> None:
    """One request with its votes, as JSON."""
    typer.echo(json.dumps(_call("GET", f"/v1/approvals/{_resolve(approval_id, api)}", api), indent=2))


@approvals_app.command("approve")
def approve(
    approval_id: IdArg,
    scope: Annotated[str, typer.Option(help="once, session or fingerprint (as the policy allows)")] = "once",
    reason: Annotated[str | None, typer.Option(help="Optional (mandatory for break-glass)")] = None,
    api: ApiOption = None,
) -> None:
    """Approve: the parked statement runs (or the access request is granted) at quorum."""
    a = _call("POST", f"/v1/approvals/{_resolve(approval_id, api)}/approve", api, {"scope": scope, "reason": reason})
    typer.echo(f"{a['id']}: {a['status']} ({a['approvals']}/{a['quorum']} approvals)")


@approvals_app.command("deny")
def deny(
    approval_id: IdArg,
    reason: Annotated[str, typer.Option(help="Why; the requester sees it")],
    api: ApiOption = None,
) -> None:
    """Deny with a reason: the client gets 42501 with it."""
    if not reason.strip():
        _fail("--reason must not be empty", 2)
    a = _call("POST", f"/v1/approvals/{_resolve(approval_id, api)}/deny", api, {"reason": reason})
    typer.echo(f"{a['id']}: {a['status']}")


@approvals_app.command("cancel")
def cancel(approval_id: IdArg, api: ApiOption = None) -> None:
    """Withdraw your own pending request."""
    a = _call("POST", f"/v1/approvals/{_resolve(approval_id, api)}/cancel", api, {})
    typer.echo(f"{a['id']}: {a['status']}")
