"""`/v1/audit`: verify the hash chain, stream exports.

Both read the chain in chunks (keyset pagination in the store), so neither holds more than
one chunk in memory however long the chain is. Verify checks signatures with the configured
public keys and the chain against `audit.witness.file` (as `jitgate audit verify` does);
what it could not check is listed in `unanchored`, and `anchored` is false then.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from broker.api.auth import require_caller
from broker.audit.export import MEDIA_TYPES, render
from broker.audit.signing import load_public_key, verifier_for
from broker.audit.witness import WitnessError, WitnessLog, read_witness
from broker.config import Settings
from broker.store import Store

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_caller)])


class BreakOut(BaseModel):
    seq: int = Field(description="Where the chain first fails to hold")
    id: str | None = Field(description="Id of the record found there, if there is one")
    kind: str = Field(
        description=(
            "altered, missing, broken_link, truncated, head_mismatch, unexpected_tail, bad_checkpoint, "
            "witness_mismatch or unwitnessed_prune"
        )
    )
    detail: str


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
    unanchored: list[str] = Field(description="What could not be checked, and so what a forger could hide")
    break_: BreakOut | None = Field(default=None, alias="break")

    model_config = {"populate_by_name": True}


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


StoreDep = Annotated[Store, Depends(_store)]


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
    store: StoreDep,
    from_seq: Annotated[int | None, Query(ge=1, description="First record to check")] = None,
    to_seq: Annotated[int | None, Query(ge=1, description="Last record to check")] = None,
) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    # Key files are small and read per request, so a rotated key is picked up without restart.
    checkpoints = verifier_for(settings.audit.signing_key_file, settings.audit.verify_key_files)
    witness, why_not = await asyncio.to_thread(_witness, settings)
    report = await store.verify_audit(from_seq=from_seq, to_seq=to_seq, checkpoints=checkpoints, witness=witness)
    out = report.to_json()
    if why_not is not None:
        out["unanchored"] = [why_not, *(w for w in out["unanchored"] if not w.startswith("no witness"))]
        out["anchored"] = False
    return out


def _witness(settings: Settings) -> tuple[WitnessLog | None, str | None]:
    """The configured witness, verified; or why it cannot be used (None, None: none configured)."""
    where = settings.audit.witness.file
    if where is None:
        return None, None
    audit = settings.audit
    key_files = list(audit.verify_key_files) or ([audit.signing_key_file] if audit.signing_key_file else [])
    if not key_files:
        return None, f"the witness {where.name} cannot be checked: no public key"
    try:
        return read_witness(where, [load_public_key(p) for p in key_files]), None
    except WitnessError as exc:
        return None, f"witness not trusted: {exc}"


@router.get(
    "/export",
    summary="Stream audit records as JSON Lines, CSV or OCSF (JSON Lines)",
    response_class=StreamingResponse,
    responses={200: {"content": {t: {} for t in set(MEDIA_TYPES.values())}}},
)
async def export(
    store: StoreDep,
    format: Annotated[Literal["jsonl", "csv", "ocsf"], Query(description="Output format")] = "jsonl",
    since: Annotated[datetime | None, Query(description="Records at or after this time")] = None,
    until: Annotated[datetime | None, Query(description="Records before this time")] = None,
) -> StreamingResponse:
    records = store.iter_audit(since=_utc(since), until=_utc(until))
    ext = "csv" if format == "csv" else "jsonl"
    return StreamingResponse(
        render(records, format),
        media_type=MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="jitgate-audit.{format}.{ext}"'},
    )
