"""`jitgate audit ...`: verify the hash chain and export the audit trail.

    jitgate audit verify [--witness FILE] [--key PUB] [--allow-unanchored] [--from-seq N] [--to-seq M] [--json]
                         [--max-unwitnessed N] [--max-witness-age 10m]
                                                 exit 1 on a break, 3 when not anchored
    jitgate audit export --format jsonl|csv|ocsf [--since T] [--until T] [--out FILE]
    jitgate audit prune [--older-than 90d] [--archive-dir DIR]       archive (witnessed), then delete
    jitgate audit verify-archive FILE... [--witness FILE] [--store]  exit 1 on a break
    jitgate audit keygen --out FILE                                  Ed25519 signing key
    jitgate audit checkpoint                                         sign the head (and witness it)

`verify` is anchored when it checks signatures with a public key and the chain against a
witness (`audit.witness.file` or `--witness`, a file in the witness's JSON Lines format: the
file witness itself, or what a webhook witness's receiver kept). Without either it says what
it could not check and exits 3, unless `--allow-unanchored`. It names the unwitnessed tail
(records after the last witnessed one, which only the store vouches for) and says "partially
anchored" once that tail has waited past two witness intervals; `--max-unwitnessed` and
`--max-witness-age` turn a longer or older tail into a break (`unwitnessed_tail`, exit 1). A
range (`--from-seq` past the chain's start) trusts the link into its first record.

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
from typing import Annotated, Any, TextIO, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from broker.audit.archive import ArchiveSummary, verify_archive
from broker.audit.chain import GENESIS_HASH, AuditRecord, TailLimits, VerifyReport, format_ts
from broker.audit.export import FORMATS, render
from broker.audit.signing import CheckpointVerifier, load_private_key, public_key_files, verifier_for
from broker.audit.witness import WitnessError, WitnessKeyError, WitnessLog, load_witness
from broker.audit.witnessing import build_setup, prune_witnessed, witness_head
from broker.config import Settings, load_settings
from broker.durations import parse_duration
from broker.exceptions import ConfigError, StoreError
from broker.store import Store

audit_app = typer.Typer(help="The tamper-evident audit trail: verify and export.", no_args_is_help=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False),
]
WitnessOption = Annotated[
    Path | None,
    typer.Option(
        "--witness", help="Witness JSON Lines file (default: audit.witness.file)", dir_okay=False,
        show_default=False,
    ),
]
KeyOption = Annotated[
    list[Path] | None,
    typer.Option("--key", help="Ed25519 public key (PEM); repeatable (default: audit.verify_key_files)"),
]
EXIT_UNANCHORED = 3


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


def _checkpoint_verifier(settings: Settings, keys: list[Path] | None = None) -> CheckpointVerifier | None:
    audit = settings.audit
    try:
        return verifier_for(None, keys or public_key_files(audit.signing_key_file, audit.verify_key_files))
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot load audit keys: {exc}", err=True)
        raise typer.Exit(2) from None


def _witness(settings: Settings, path: Path | None, keys: list[Path] | None) -> WitnessLog | None:
    """The witness's verified entries; None when none is configured. Exit 2 when it is given
    but cannot be checked (no key), exit 1 when a line does not verify."""
    try:
        return load_witness(settings, path=path, key_files=keys)
    except WitnessKeyError as exc:
        typer.echo(f"{exc}; or pass --key", err=True)
        raise typer.Exit(2) from None
    except WitnessError as exc:
        typer.echo(f"witness not trusted: {exc}", err=True)
        raise typer.Exit(1) from None


def print_report(report: VerifyReport, console: Console) -> None:
    if report.ok:
        console.print(
            f"[green]ok[/green]: {report.checked} records verified"
            + (f" (seq {report.first_seq}..{report.last_seq}, head {report.last_hash})" if report.checked else "")
        )
        if report.signed_through is not None:
            console.print(f"signed checkpoints hold through seq {report.signed_through}")
        if report.witnessed_through is not None:
            console.print(f"the witness holds the chain through seq {report.witnessed_through}")
        if report.trusted_start is not None:
            console.print(f"range: the link into seq {report.trusted_start} is trusted (records before it "
                          "were not checked)", highlight=False)
        if report.unwitnessed_from is not None:
            since = format_ts(report.unwitnessed_since) if report.unwitnessed_since else "?"
            last = format_ts(report.last_witness_ts) if report.last_witness_ts else "never"
            console.print(
                f"unwitnessed: seq {report.unwitnessed_from}..{report.unwitnessed_to} (waiting since {since}; "
                f"last witness entry {last}): only the store vouches for these", highlight=False, soft_wrap=True,
            )
        if report.partially_anchored:
            console.print(
                "[bold yellow]PARTIALLY ANCHORED[/bold yellow]: the unwitnessed tail is older than two witness "
                "intervals; is the worker signing (audit.witness.interval)?", highlight=False, soft_wrap=True,
            )
        for why in report.unanchored:
            console.print(f"[bold yellow]NOT ANCHORED[/bold yellow]: {why}", highlight=False, soft_wrap=True)
        return
    b = report.broken
    assert b is not None
    console.print(
        f"[red]BROKEN[/red] at seq {b.seq}" + (f" (record {b.id})" if b.id else "") + f": {b.kind}: {b.detail}",
        soft_wrap=True, highlight=False,
    )
    console.print(f"{report.checked} records verified before the break")


@audit_app.command("verify")
def verify(
    from_seq: Annotated[int | None, typer.Option("--from-seq", min=1, help="First record to check")] = None,
    to_seq: Annotated[int | None, typer.Option("--to-seq", min=1, help="Last record to check")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object")] = False,
    witness: WitnessOption = None,
    keys: KeyOption = None,
    allow_unanchored: Annotated[
        bool, typer.Option("--allow-unanchored", help="Exit 0 even without a public key or a witness")
    ] = False,
    max_unwitnessed: Annotated[
        int | None,
        typer.Option("--max-unwitnessed", min=0, help="Fail if more records than this follow the last witnessed one"),
    ] = None,
    max_witness_age: Annotated[
        str | None,
        typer.Option("--max-witness-age", help="Fail if unwitnessed records have waited longer than this (e.g. 10m)"),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Check the hash chain against its signatures and the witness; exit 1 and name the first
    broken record if it does not hold (or the unwitnessed tail is past a --max-* limit), 3 if it
    could not be anchored (no key or no witness). Sessions are swept too: exit 1 naming each
    session whose row and chained records disagree."""
    settings = settings_or_exit(config)
    try:
        max_age = parse_duration(max_witness_age) if max_witness_age is not None else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--max-witness-age") from None
    limits = TailLimits(parse_duration(settings.audit.witness.interval), max_unwitnessed, max_age)
    checkpoints = _checkpoint_verifier(settings, keys)
    log = _witness(settings, witness, keys)
    report = run_with_store(
        settings,
        lambda s: s.audit.verify_audit(
            from_seq=from_seq, to_seq=to_seq, checkpoints=checkpoints, witness=log, limits=limits
        ),
    )
    # Sessions against their chained records, both ways (`SessionRepository.sweep_sessions`).
    sweep = run_with_store(settings, lambda s: s.sessions.sweep_sessions(from_seq=from_seq, to_seq=to_seq))
    if as_json:
        typer.echo(json.dumps({**report.to_json(), "sessions": sweep.to_json()}))
    else:
        print_report(report, Console())
        for problem in sweep.problems:
            typer.echo(f"SESSION COVERAGE: {problem}")
        if sweep.count > len(sweep.problems):
            typer.echo(f"SESSION COVERAGE: ... {sweep.count - len(sweep.problems)} more")
    if not report.ok or not sweep.ok:
        raise typer.Exit(1)
    if report.unanchored:
        for why in report.unanchored:
            typer.echo(f"NOT ANCHORED: {why}", err=True)
        if not allow_unanchored:
            typer.echo("exit 3: the chain holds, but was not checked against anything outside the store "
                       "(--allow-unanchored to accept that)", err=True)
            raise typer.Exit(EXIT_UNANCHORED)


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
        total = await store.audit.count_audit(since=start, until=end) if progress else None
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
                    async for record in store.audit.iter_audit(since=start, until=end):
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
    if settings.audit.witness.configured:
        try:
            setup = build_setup(settings)
        except ValueError as exc:
            typer.echo(f"not pruning without a witness: {exc}", err=True)
            raise typer.Exit(2) from None

        async def witnessed(s: Store) -> ArchiveSummary | None:
            try:
                return await prune_witnessed(s.audit, setup, before=cutoff, archive_dir=where)
            finally:
                await setup.aclose()

        run: Callable[[Store], Awaitable[ArchiveSummary | None]] = witnessed
    else:
        typer.echo(
            "NOT ANCHORED: no witness configured (audit.witness): this prune is not witnessed, and a "
            "deleted start of the chain will look the same to a verifier", err=True,
        )

        def run(s: Store) -> Awaitable[ArchiveSummary | None]:
            return s.audit.prune_audit(before=cutoff, archive_dir=where)

    try:
        summary = run_with_store(settings, run)
    except (ValueError, WitnessError) as exc:
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
    paths: Annotated[
        list[Path], typer.Argument(help="Archives written by `audit prune`", exists=True, dir_okay=False)
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object per archive")] = False,
    witness: WitnessOption = None,
    keys: KeyOption = None,
    against_store: Annotated[
        bool, typer.Option("--store", help="The last archive must end at the live store's anchor")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Check archives' chains, trailers and digests, that they chain onto each other (and, with
    --witness, that each was witnessed at its prune; with --store, onto the live chain)."""
    checked: list[tuple[Path, dict[str, Any]]] = []
    failed = False
    for path in paths:
        report, trailer = verify_archive(path)
        if as_json:
            typer.echo(json.dumps({**report.to_json(), "file": str(path), "archive": trailer}))
        else:
            typer.echo(f"{path}:")
            print_report(report, Console())
            if trailer is not None:
                typer.echo(f"follows {trailer['prev_hash']}; anchor {trailer['through_hash']}")
        if not report.ok or trailer is None:
            failed = True
        else:
            checked.append((path, trailer))
    problems = _archive_chain(sorted(checked, key=lambda pt: int(pt[1]["from_seq"])))
    if witness is not None or against_store:
        settings = settings_or_exit(config)
        if witness is not None:
            log = _witness(settings, witness, keys)
            assert log is not None
            problems += _archives_witnessed(checked, log)
        if against_store and checked:
            problems += _archives_reach_store(settings, max(t["through_seq"] for _, t in checked), checked)
    for problem in problems:
        typer.echo(f"BROKEN: {problem}", err=True)
    if failed or problems:
        raise typer.Exit(1)


def _archive_chain(ordered: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    problems: list[str] = []
    if ordered and ordered[0][1]["from_seq"] == 1 and ordered[0][1]["prev_hash"] != GENESIS_HASH:
        problems.append(f"{ordered[0][0]}: starts at seq 1 but does not follow the genesis")
    for (prev_path, prev), (path, cur) in zip(ordered, ordered[1:], strict=False):
        if cur["from_seq"] != prev["through_seq"] + 1 or cur["prev_hash"] != prev["through_hash"]:
            problems.append(f"{path} does not follow {prev_path} (seq {prev['through_seq']}, {prev['through_hash']})")
    return problems


def _archives_witnessed(checked: list[tuple[Path, dict[str, Any]]], log: WitnessLog) -> list[str]:
    problems: list[str] = []
    for path, trailer in checked:
        entry = log.prunes.get(int(trailer["through_seq"]))
        signed = entry.archive if entry is not None else None
        if signed is None or any(signed.get(k) != trailer[k] for k in ("from_seq", "through_hash", "sha256")):
            problems.append(f"{path}: no witnessed prune matches its seq range, last hash and digest")
    return problems


def _archives_reach_store(settings: Settings, last_seq: int, checked: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    state = run_with_store(settings, lambda s: s.audit.audit_state())
    anchor_seq = state.anchor_seq if state is not None else 0
    anchor_hash = state.anchor_hash if state is not None else GENESIS_HASH
    last = next(t for _, t in checked if t["through_seq"] == last_seq)
    if anchor_seq == last_seq and anchor_hash == last["through_hash"]:
        return []
    if anchor_seq > last_seq:
        return [f"the store's chain starts after seq {anchor_seq}; archives after seq {last_seq} were not given"]
    return [f"the store's anchor (seq {anchor_seq}, {anchor_hash}) is not where the archives end (seq {last_seq})"]


@audit_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Private key file to create (mode 0600)")],
) -> None:
    """Make an Ed25519 key for signed checkpoints; prints the public key for verifiers."""
    from broker.audit.signing import new_private_key, public_pem

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        key = new_private_key(out)
    except FileExistsError:
        typer.echo(f"{out} exists; not overwriting a key", err=True)
        raise typer.Exit(2) from None
    typer.echo(public_pem(key).decode(), nl=False)
    typer.echo(f"wrote {out}; set audit.signing_key_file to it", err=True)


@audit_app.command("checkpoint")
def checkpoint(config: ConfigOption = None) -> None:
    """Append a checkpoint signing the chain's head and, with `audit.witness`, write it to the
    witness (the worker does this every `audit.witness.interval`)."""
    settings = settings_or_exit(config)
    if settings.audit.signing_key_file is None:
        typer.echo("no audit.signing_key_file configured", err=True)
        raise typer.Exit(2)
    if settings.audit.witness.configured:
        try:
            setup = build_setup(settings)
        except ValueError as exc:
            typer.echo(str(exc), err=True)
            raise typer.Exit(2) from None

        async def witnessed(s: Store) -> dict[str, Any] | None:
            try:
                return await witness_head(s.audit, setup)
            finally:
                await setup.aclose()

        try:
            done = run_with_store(settings, witnessed)
        except WitnessError as exc:
            typer.echo(f"not signed: {exc}", err=True)
            raise typer.Exit(1) from None
        if done is None:
            typer.echo("the audit chain is empty; nothing to sign", err=True)
            return
        typer.echo(f"checkpoint seq {done['seq']} ({done['hash']}) witnessed: {done['witnesses']}")
        if "failed" in done["witnesses"].values():
            raise typer.Exit(1)
        return
    typer.echo("NOT ANCHORED: no witness configured (audit.witness); the checkpoint stays in the store only",
               err=True)
    try:
        key = load_private_key(settings.audit.signing_key_file)
    except (OSError, ValueError) as exc:
        typer.echo(f"cannot load the signing key: {exc}", err=True)
        raise typer.Exit(2) from None
    record = run_with_store(settings, lambda s: s.audit.checkpoint_audit(key))
    if record is None:
        typer.echo("the audit chain is empty; nothing to sign", err=True)
        return
    typer.echo(f"checkpoint seq {record.seq} signs seq {record.data['signs_seq']} ({record.data['signs_hash']})")
