"""`/v1/audit`: verify the hash chain, stream exports.

Both read the chain in chunks (keyset pagination in the store), so neither holds more than
one chunk in memory however long the chain is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from broker.api.auth import require_caller
from broker.audit.export import MEDIA_TYPES, render
from broker.audit.signing import verifier_for
from broker.config import Settings
from broker.store import Store

router = APIRouter(prefix="/v1/audit", tags=["audit"], dependencies=[Depends(require_caller)])


class BreakOut(BaseModel):
    seq: int = Field(description="Where the chain first fails to hold")
    id: str | None = Field(description="Id of the record found there, if there is one")
    kind: str = Field(
        description="altered, missing, broken_link, truncated, head_mismatch, unexpected_tail or bad_checkpoint"
    )
    detail: str


class VerifyOut(BaseModel):
    ok: bool
    checked: int = Field(description="Records checked before the first break (all, if ok)")
    first_seq: int | None
    last_seq: int | None = Field(description="Last record that checked out")
    last_hash: str | None
    signed_through: int | None = Field(description="Last seq covered by a verified signed checkpoint")
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
    report = await store.verify_audit(from_seq=from_seq, to_seq=to_seq, checkpoints=checkpoints)
    return report.to_json()


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
