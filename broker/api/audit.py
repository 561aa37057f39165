"""`/v1/audit`: verify the hash chain, stream exports.

Both read the chain in chunks (keyset pagination in the store), so neither holds more than
one chunk in memory however long the chain is. Verify checks signatures with the configured
public keys and the chain against `audit.witness.file` (as `jitgate audit verify` does);
what it could not check is listed in `unanchored`, and `anchored` is false then. The witness's
verified lines are kept between requests (only lines appended since are verified); a witness
file seen to shrink, or to change in lines already verified, is listed there too. It also
names the unwitnessed tail (`unwitnessed`), and `max_unwitnessed`/`max_witness_age` turn a
longer or older one into a break (`unwitnessed_tail`).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from broker.api.auth import require_caller
from broker.api.deps import AuditDep, SessionsDep
from broker.audit.chain import TailLimits
from broker.audit.export import MEDIA_TYPES, render
from broker.audit.signing import verifier_for
from broker.audit.witness import WitnessCache, WitnessError, WitnessKeyError, WitnessLog, load_witness
from broker.config import Settings
from broker.durations import parse_duration

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_caller)])


class BreakOut(BaseModel):
    seq: int = Field(description="Where the chain first fails to hold")
    id: str | None = Field(description="Id of the record found there, if there is one")
    kind: str = Field(
        description=(
            "altered, missing, broken_link, truncated, head_mismatch, unexpected_tail, bad_checkpoint, "
            "witness_mismatch, unwitnessed_prune or unwitnessed_tail (past max_unwitnessed or max_witness_age)"
        )
    )
    detail: str


class SessionSweepOut(BaseModel):
    ok: bool
    checked: int = Field(description="session.start records of the range compared with their sessions rows")
    rows: int = Field(description="sessions rows looked up in the chain (0 for a seq range)")
    count: int = Field(description="Sessions found not matching the chain")
    problems: list[str] = Field(
        description="The first of them, 'session ID: what' (row_deleted, no_audit_record or the fields)"
    )
    whole: bool = Field(description="The whole live chain was read, so rows without a record were looked for")


class UnwitnessedOut(BaseModel):
    from_seq: int
    to_seq: int
    records: int
    since: str | None = Field(description="Since when they have waited for a witness")


class VerifyOut(BaseModel):
    ok: bool
    checked: int = Field(description="Records checked before the first break (all, if ok)")
    first_seq: int | None
    last_seq: int | None = Field(description="Last record that checked out")
    last_hash: str | None
    signed_through: int | None = Field(description="Last seq covered by a verified signed checkpoint")
    witnessed_through: int | None = Field(description="Last seq found in the chain as the witness signed it")
    anchored: bool = Field(
        description="Signatures and the external witness were both checked; false: see `unanchored`"
    )
    unanchored: list[str] = Field(
        description=(
            "What could not be checked, and so what a forger could hide; also a witness file seen to shrink or "
            "change in lines an earlier request verified (said until the API restarts)"
        )
    )
    partially_anchored: bool = Field(
        description="The unwitnessed tail has waited past two witness intervals: the worker is not signing"
    )
    unwitnessed: UnwitnessedOut | None = Field(
        description="Records after the last witnessed one: only the store vouches for them (null: none)"
    )
    last_witness_ts: str | None = Field(description="When the witness's last entry was signed")
    trusted_start: int | None = Field(
        description="A range: the link into this seq was taken as given (records before it were not checked)"
    )
    break_: BreakOut | None = Field(default=None, alias="break")
    sessions: SessionSweepOut | None = Field(
        default=None, description="Sessions against their chained records (ok false here makes `ok` false)"
    )

    model_config = {"populate_by_name": True}


def _utc(value: datetime | None) -> datetime | None:
    # A time without a zone in a query string is taken as UTC, the zone of the audit log.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


@router.get(
    "/verify",
    response_model=VerifyOut,
    response_model_by_alias=True,
    summary="Check the hash chain; report the first broken link",
)
async def verify(
    request: Request,
    audit: AuditDep,
    sessions: SessionsDep,
    from_seq: Annotated[int | None, Query(ge=1, description="First record to check")] = None,
    to_seq: Annotated[int | None, Query(ge=1, description="Last record to check")] = None,
    max_unwitnessed: Annotated[
        int | None, Query(ge=0, description="Break if more records than this follow the last witnessed one")
    ] = None,
    max_witness_age: Annotated[
        str | None, Query(description="Break if unwitnessed records have waited longer than this (e.g. 10m)")
    ] = None,
) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    try:
        max_age = parse_duration(max_witness_age) if max_witness_age is not None else None
    except ValueError as exc:
        raise HTTPException(422, f"max_witness_age: {exc}") from None
    limits = TailLimits(parse_duration(settings.audit.witness.interval), max_unwitnessed, max_age)
    # Key files are small and read per request, so a rotated key is picked up without restart.
    checkpoints = verifier_for(settings.audit.signing_key_file, settings.audit.verify_key_files)
    witness, why_not = await asyncio.to_thread(_witness, settings, _witness_cache(request))
    report = await audit.verify_audit(
        from_seq=from_seq, to_seq=to_seq, checkpoints=checkpoints, witness=witness, limits=limits
    )
    out = report.to_json()
    out["sessions"] = (await sessions.sweep_sessions(from_seq=from_seq, to_seq=to_seq)).to_json()
    out["ok"] = out["ok"] and out["sessions"]["ok"]
    if why_not:
        out["unanchored"] = [*why_not, *(w for w in out["unanchored"] if not w.startswith("no witness"))]
        out["anchored"] = False
    return out


def _witness_cache(request: Request) -> WitnessCache:
    cache: WitnessCache | None = getattr(request.app.state, "witness_cache", None)
    if cache is None:
        cache = request.app.state.witness_cache = WitnessCache()
    return cache


def _witness(settings: Settings, cache: WitnessCache) -> tuple[WitnessLog | None, list[str]]:
    """The configured witness, verified (lines seen by an earlier request are not verified
    again); and why it cannot be used, or was found rewritten (a rewrite seen once is said
    until the process restarts)."""
    where = settings.audit.witness.file
    try:
        witness = load_witness(settings, read=cache.read)
    except WitnessKeyError as exc:
        return None, [str(exc)]
    except WitnessError as exc:
        return None, [f"witness not trusted: {exc}", *(cache.findings(where) if where else [])]
    return witness, cache.findings(where) if where else []


@router.get(
    "/export",
    summary="Stream audit records as JSON Lines, CSV or OCSF (JSON Lines)",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in set(MEDIA_TYPES.values())}}},
)
async def export(
    audit: AuditDep,
    format: Annotated[Literal["jsonl", "csv", "ocsf"], Query(description="Output format")] = "jsonl",
    since: Annotated[datetime | None, Query(description="Records at or after this time")] = None,
    until: Annotated[datetime | None, Query(description="Records before this time")] = None,
) -> StreamingResponse:
    records = audit.iter_audit(since=_utc(since), until=_utc(until))
    ext = "csv" if format == "csv" else "jsonl"
    return StreamingResponse(
        render(records, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="jitgate-audit.{format}.{ext}"'},
    )
