"""`jitgate audit ...`: verify the hash chain and export the audit trail.

    jitgate audit verify [--from-seq N] [--to-seq M] [--json]      exit 1 on a break
    jitgate audit export --format jsonl|csv|ocsf [--since T] [--until T] [--out FILE]
    jitgate audit prune [--older-than 90d] [--archive-dir DIR]       archive, then delete
    jitgate audit verify-archive FILE [--json]                       exit 1 on a break
    jitgate audit keygen --out FILE                                  Ed25519 signing key
    jitgate audit checkpoint                                         sign the current head

T is an ISO 8601 time (UTC if no zone) or an age such as 7d or 12h (that long ago). An
export goes to stdout unless `--out` is given; the progress bar goes to stderr.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from broker.audit.archive import verify_archive
from broker.audit.chain import AuditRecord, VerifyReport
from broker.audit.export import FORMATS, render
from broker.audit.signing import CheckpointVerifier, load_private_key, verifier_for
from broker.config import Settings, load_settings
from broker.durations import parse_duration
from broker.exceptions import ConfigError, StoreError
from broker.store import Store

audit_app = typer.Typer(help="The tamper-evident audit trail: verify and export.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False),
]


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")


def settings_or_exit(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


def parse_when(value: str | None, *, now: datetime | None = None) -> datetime | None:
    """An ISO time (UTC when it has no zone) or an age like "7d" meaning that long ago."""
    if value is None:
        return None
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        try:
            return (now or datetime.now(UTC)) - parse_duration(value)
        except ValueError:
            raise typer.BadParameter(f"{value!r} is neither an ISO time nor an age like 7d") from None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


T = TypeVar("T")


def run_with_store(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the store, run `fn` on it, close it; a store failure exits with status 2."""

    async def main() -> T:
        store = await Store.open(settings.store_url.get_secret_value())
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreError as exc:
        typer.echo(f"store error: {exc}", err=True)
        raise typer.Exit(2) from None


def _checkpoint_verifier(settings: Settings) -> CheckpointVerifier | None:
    try:
        return verifier_for(settings.audit.signing_key_file, settings.audit.verify_key_files)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot load audit keys: {exc}", err=True)
        raise typer.Exit(2) from None


def print_report(report: VerifyReport, console: Console) -> None:
    if report.ok:
        console.print(
            f"[green]ok[/green]: {report.checked} records verified"
            + (f" (seq {report.first_seq}..{report.last_seq}, head {report.last_hash})" if report.checked else "")
        )
        if report.signed_through is not None:
            console.print(f"signed checkpoints hold through seq {report.signed_through}")
        return
    b = report.broken
    assert b is not None
    console.print(
        f"[red]BROKEN[/red] at seq {b.seq}" + (f" (record {b.id})" if b.id else "") + f": {b.kind}: {b.detail}"
    )
    console.print(f"{report.checked} records verified before the break")


@audit_app.command("verify")
def verify(
    from_seq: Annotated[int | None, typer.Option("--from-seq", min=1, help="First record to check")] = None,
    to_seq: Annotated[int | None, typer.Option("--to-seq", min=1, help="Last record to check")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object")] = False,
    config: ConfigOption = None,
) -> None:
    """Check the hash chain; exit 1 and name the first broken record if it does not hold."""
    settings = settings_or_exit(config)
    checkpoints = _checkpoint_verifier(settings)
    report = run_with_store(
        settings, lambda s: s.verify_audit(from_seq=from_seq, to_seq=to_seq, checkpoints=checkpoints)
    )
    if as_json:
        typer.echo(json.dumps(report.to_json()))
    else:
        print_report(report, Console())
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def export(
    fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl, csv or ocsf")] = "jsonl",
    since: Annotated[str | None, typer.Option(help="From this time (ISO) or age (7d)")] = None,
    until: Annotated[str | None, typer.Option(help="Before this time (ISO) or age")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write here instead of stdout")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr")] = True,
    config: ConfigOption = None,
) -> None:
    """Stream audit records in a time range, in constant memory."""
    if fmt not in FORMATS:
        typer.echo(f"unknown format {fmt!r} (use {', '.join(FORMATS)})", err=True)
        raise typer.Exit(2)
    start, end = parse_when(since), parse_when(until)
    settings = settings_or_exit(config)

    async def run(store: Store) -> int:
        total = await store.count_audit(since=start, until=end) if progress else None
        stream: TextIO = out.open("w", encoding="utf-8", newline="") if out else sys.stdout
        written = 0
        bar = Progress(
            TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=Console(stderr=True), disable=not progress, transient=True,
        )
        try:
            with bar:
                task = bar.add_task("export", total=total)

                async def counted() -> AsyncIterator[AuditRecord]:
                    nonlocal written
                    async for record in store.iter_audit(since=start, until=end):
                        written += 1
                        if written % 1000 == 0:
                            bar.update(task, completed=written)
                        yield record

                async for chunk in render(counted(), fmt):
                    stream.write(chunk)
                bar.update(task, completed=written)
        finally:
            if out:
                stream.close()
            else:
                stream.flush()
        return written

    written = run_with_store(settings, run)
    if out:
        typer.echo(f"exported {written} records to {out}", err=True)


@audit_app.command("prune")
def prune(
    older_than: Annotated[
        str | None, typer.Option(help="Age, e.g. 90d (default: audit.retention_days from the config)")
    ] = None,
    archive_dir: Annotated[
        Path | None, typer.Option(help="Default: audit.archive_dir or <data_dir>/audit-archive")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Archive records older than the retention age to JSONL.gz, then delete them from the store.

    The store keeps the last archived record's hash as its anchor, so `audit verify` still
    checks the remaining chain from the cut; `audit verify-archive FILE` checks an archive.
    """
    settings = settings_or_exit(config)
    if older_than is not None:
        cutoff = parse_when(older_than)
    elif settings.audit.retention_days is not None:
        cutoff = datetime.now(UTC) - timedelta(days=settings.audit.retention_days)
    else:
        typer.echo("no retention configured: pass --older-than or set audit.retention_days", err=True)
        raise typer.Exit(2)
    assert cutoff is not None
    where = archive_dir or settings.audit.archive_dir or settings.data_dir / "audit-archive"
    try:
        summary = run_with_store(settings, lambda s: s.prune_audit(before=cutoff, archive_dir=where))
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    if summary is None:
        typer.echo(f"nothing older than {cutoff.isoformat()}", err=True)
        return
    typer.echo(
        f"archived seq {summary.from_seq}..{summary.through_seq} ({summary.records} records) to "
        f"{summary.path}; anchor {summary.through_hash}"
    )


@audit_app.command("verify-archive")
def verify_archive_cmd(
    path: Annotated[Path, typer.Argument(help="An archive written by `audit prune`", exists=True, dir_okay=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object")] = False,
) -> None:
    """Check an archive's chain, trailer and digest; exit 1 if anything does not hold."""
    report, trailer = verify_archive(path)
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "archive": trailer}))
    else:
        print_report(report, Console())
        if trailer is not None:
            typer.echo(f"follows {trailer['prev_hash']}; anchor {trailer['through_hash']}")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Private key file to create (mode 0600)")],
) -> None:
    """Make an Ed25519 key for signed checkpoints; prints the public key for verifiers."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if out.exists():
        typer.echo(f"{out} exists; not overwriting a key", err=True)
        raise typer.Exit(2)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600)
    out.write_bytes(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    typer.echo(public.decode(), nl=False)
    typer.echo(f"wrote {out}; set audit.signing_key_file to it", err=True)


@audit_app.command("checkpoint")
def checkpoint(config: ConfigOption = None) -> None:
    """Append a checkpoint signing the chain's current head (run it periodically, e.g. cron)."""
    settings = settings_or_exit(config)
    if settings.audit.signing_key_file is None:
        typer.echo("no audit.signing_key_file configured", err=True)
        raise typer.Exit(2)
    try:
        key = load_private_key(settings.audit.signing_key_file)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot load the signing key: {exc}", err=True)
        raise typer.Exit(2) from None
    record = run_with_store(settings, lambda s: s.checkpoint_audit(key))
    if record is None:
        typer.echo("the audit chain is empty; nothing to sign", err=True)
        return
    typer.echo(f"checkpoint seq {record.seq} signs seq {record.data['signs_seq']} ({record.data['signs_hash']})")
