"""`jitgate sessions ...`: recorded proxy sessions, and their replay as a timeline.

    jitgate sessions list [--active] [--limit N] [--json]
    jitgate sessions show ID [--json]
    jitgate sessions replay ID [--json]

`replay` prints what happened in the session in order: each statement at its offset from
the session start, with the decision (and rule), rows returned, values masked, duration and
any SQLSTATE the client got, and, for resources with `record_results`, the rows the client
received (after masking, capped per statement). `--json` prints the same as one object per
line (a `session` line, then one `statement` line each, then `end`), for machines.

What `show` and `replay` print of a statement is checked against its record in the audit
chain (`broker.audit.coverage`): a statement whose row was edited, deleted (then shown from
the chained record) or added behind the chain's back is marked TAMPERED with what does not
match, and the command exits with status 3 (`verified`/`tampered` in `--json`). The session
itself likewise, against its `session.start` and `session.end` records: a field edited in the
`sessions` table is named, a session whose row was deleted is shown from the chain
(`row_deleted`), a row the chain never had is `no_audit_record` (`session_tampered` in
`--json`). `list` shows sessions whose row is gone too, and marks every tampered session
(exit 3 when it lists one).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from broker.cli.audit_cmd import run_with_store, settings_or_exit
from broker.store import SessionDetail, SessionInfo, StatementInfo

sessions_app = typer.Typer(
    help="Recorded proxy sessions: list, show, replay, each statement checked against the audit chain.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False),
]
_DECISION_STYLE = {"allow": "green", "review": "yellow", "block": "red"}
#: Exit status of `show` and `replay` when something shown does not match the audit chain.
EXIT_TAMPERED = 3


def register(app: typer.Typer) -> None:
    app.add_typer(sessions_app, name="sessions")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


def session_json(s: SessionInfo) -> dict[str, Any]:
    out: dict[str, Any] = _jsonable(asdict(s))
    out["active"] = s.active
    out["session_tampered"] = out.pop("tampered")
    return out


def statement_json(st: StatementInfo, started: datetime) -> dict[str, Any]:
    out: dict[str, Any] = _jsonable(asdict(st))
    out["offset_ms"] = round((st.started_at - started).total_seconds() * 1000, 3)
    return out


def _load(settings_path: Path | None, session_id: str) -> SessionDetail:
    settings = settings_or_exit(settings_path)
    detail = run_with_store(settings, lambda s: s.sessions.get_session(session_id))
    if detail is None:
        typer.echo(f"no session {session_id}", err=True)
        raise typer.Exit(1)
    return detail


@sessions_app.command("list")
def list_sessions(
    active: Annotated[bool, typer.Option("--active", help="Only sessions still open")] = False,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    config: ConfigOption = None,
) -> None:
    """Sessions, newest first, each checked against the audit chain; sessions whose row was
    deleted are listed from the chain (exit 3 when any listed session is tampered with)."""
    settings = settings_or_exit(config)
    found = run_with_store(settings, lambda s: s.sessions.list_sessions(active_only=active, limit=limit))
    if as_json:
        for s in found:
            typer.echo(json.dumps(session_json(s)))
        if any(s.tampered for s in found):
            raise typer.Exit(EXIT_TAMPERED)
        return
    table = Table("id", "principal", "resource/role", "client", "application", "started", "ended", "stmts")
    for s in found:
        table.add_row(
            s.id, Text(s.principal), Text(f"{s.resource}/{s.role}"), Text(s.client_addr or ""),
            Text(s.application_name or ""),
            s.started_at.isoformat(timespec="seconds"),
            s.ended_at.isoformat(timespec="seconds") if s.ended_at else "[green]active[/green]",
            str(s.statements),
            style="red" if s.tampered else None,
        )
    console = Console()
    console.print(table)
    tampered = [s for s in found if s.tampered]
    for s in tampered:
        console.print(_session_tampered_text(s), soft_wrap=True)
    if tampered:
        raise typer.Exit(EXIT_TAMPERED)


def _header(console: Console, s: SessionInfo) -> None:
    if s.tampered:
        # First, so no one reads the forged header below as what happened.
        console.print(_session_tampered_text(s), soft_wrap=True)
    console.print(Text.assemble(Text(f"session {s.id}", style="bold"), f"  {s.principal} ({', '.join(s.groups)})"))
    console.print(
        Text(
            f"  resource {s.resource} as {s.role}, from {s.client_addr or '?'}, application_name "
            f"{s.application_name or '?'}"
        )
    )
    console.print(Text(f"  intent: {s.intent}") if s.intent else "  intent: no reason given")
    ended = f"ended {s.ended_at.isoformat()} ({s.end_reason})" if s.ended_at else "still active"
    console.print(Text(f"  started {s.started_at.isoformat()}, {ended}"))
    console.print(f"  {s.statements} statements, {s.bytes_in} bytes in, {s.bytes_out} bytes out")


def _session_tampered_text(s: SessionInfo) -> Text:
    what = ", ".join(s.tampered)
    return Text(
        f"TAMPERED session {s.id}: does not match its audit records"
        f"{f' (session.start seq {s.audit_seq})' if s.audit_seq is not None else ''}: {what}",
        style="bold red",
    )


def _tampered_text(st: StatementInfo) -> Text:
    what = ", ".join(st.tampered)
    return Text(
        f"TAMPERED #{st.seq}: does not match its audit record"
        f"{f' (seq {st.audit_seq})' if st.audit_seq is not None else ''}: {what}",
        style="bold red",
    )


def _verdict(console: Console, detail: SessionDetail) -> None:
    """The coverage summary after what was printed; exits 3 when anything was tampered with."""
    tampered = detail.tampered
    if detail.session.tampered:
        console.print(_session_tampered_text(detail.session), soft_wrap=True)
    if tampered:
        for st in tampered:
            console.print(_tampered_text(st), soft_wrap=True)
        console.print(
            Text(
                f"TAMPERED: {len(tampered)} statement(s) shown do not match the audit chain "
                f"(#{', #'.join(str(st.seq) for st in tampered)})",
                style="bold red",
            ),
            soft_wrap=True,
        )
    if not detail.verified:
        raise typer.Exit(EXIT_TAMPERED)
    if detail.session.audit_seq is None:
        console.print("session not checked: its session.start record was pruned (archived)", style="yellow")
    unchecked = [st for st in detail.statements if not st.verified]
    if unchecked:
        console.print(
            f"{len(unchecked)} statement(s) not checked: their audit records were pruned (archived)", style="yellow"
        )


@sessions_app.command("show")
def show(
    session_id: Annotated[str, typer.Argument(help="Session id")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """One session's details, checked against the audit chain (exit 3: tampered with)."""
    detail = _load(config, session_id)
    if as_json:
        out = session_json(detail.session)
        out["statements"] = [statement_json(st, detail.session.started_at) for st in detail.statements]
        out["verified"] = detail.verified
        out["tampered"] = [st.seq for st in detail.tampered]
        typer.echo(json.dumps(out))
        if not detail.verified:
            raise typer.Exit(EXIT_TAMPERED)
        return
    console = Console()
    _header(console, detail.session)
    approvals = sorted({st.approval_id for st in detail.statements if st.approval_id})
    if approvals:
        console.print(f"  approvals: {', '.join(approvals)}")
    _verdict(console, detail)


def _print_results(console: Console, rs: dict[str, Any]) -> None:
    """One recorded result set, as the client saw it (masked values stay masked)."""
    table = Table(*(str(c) for c in rs.get("columns", ())), show_lines=False, padding=(0, 1))
    for row in rs.get("rows", ()):
        # Text() so that a value like "[red]" is printed as recorded, not read as markup.
        table.add_row(*(Text("NULL", style="dim") if v is None else Text(str(v)) for v in row))
    console.print(table)
    if rs.get("truncated"):
        console.print(Text("    (result truncated: recording cap reached)", style="dim"))


@sessions_app.command("replay")
def replay(
    session_id: Annotated[str, typer.Argument(help="Session id")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON Lines: session, statements, end")] = False,
    config: ConfigOption = None,
) -> None:
    """The session as a timeline: every statement with its decision, rows, masking and timing,
    checked against the audit chain (exit 3: tampered with)."""
    detail = _load(config, session_id)
    s = detail.session
    if as_json:
        typer.echo(json.dumps({"event": "session", **session_json(s)}))
        for st in detail.statements:
            typer.echo(json.dumps({"event": "statement", **statement_json(st, s.started_at)}))
        if s.ended_at is not None:
            typer.echo(json.dumps({"event": "end", "at": s.ended_at.isoformat(), "reason": s.end_reason}))
        if not detail.verified:
            raise typer.Exit(EXIT_TAMPERED)
        return
    console = Console()
    _header(console, s)
    console.print()
    # A timeline, not a table: SQL is printed whole on its own line, never cut to fit.
    for st in detail.statements:
        offset = (st.started_at - s.started_at).total_seconds() * 1000
        line = Text(f"+{offset:,.1f} ms  #{st.seq}  ")
        line.append(st.decision, style=_DECISION_STYLE.get(st.decision, ""))
        if st.rule:
            line.append(f" ({st.rule})", style="dim")
        facts = []
        if st.rows is not None:
            facts.append(f"{st.rows} rows")
        if st.masked_values:
            facts.append(f"{st.masked_values} masked")
        if st.duration_ms is not None:
            facts.append(f"{st.duration_ms:.2f} ms")
        if st.error_sqlstate:
            facts.append(f"SQLSTATE {st.error_sqlstate}")
        if st.reason and st.decision != "allow":
            facts.append(st.reason)
        if st.approval_id:
            facts.append(f"approval {st.approval_id}")
        if facts:
            line.append("  " + ", ".join(facts))
        console.print(line, soft_wrap=True)
        if st.tampered:
            console.print(_tampered_text(st), soft_wrap=True)
        console.print(Text("    " + st.sql, style="cyan"), soft_wrap=True)
        for rs in st.results or ():
            _print_results(console, rs)
    if s.ended_at is not None:
        offset = (s.ended_at - s.started_at).total_seconds() * 1000
        console.print(f"+{offset:,.1f} ms  session ended: {s.end_reason}", soft_wrap=True)
    _verdict(console, detail)
