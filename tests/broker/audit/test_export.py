"""Export formats: JSONL and CSV re-verify as a chain, OCSF validates against the real OCSF
schema (tests/broker/audit/test_ocsf.py covers every record type and the validator itself),
and a large export runs in bounded memory."""

from __future__ import annotations

import csv
import io
import json
import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.audit import events
from broker.audit.chain import GENESIS_HASH, AuditRecord, ChainVerifier, seal
from broker.audit.export import render
from broker.audit.ocsf import endpoint, to_ocsf
from broker.store import Store
from tests.broker.audit.ocsf_schema import errors

T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)

SAMPLES: list[events.AuditEvent] = [
    events.login(principal="alice@example.com", method="oidc-device", groups=["dba"], client_addr="10.1.2.3"),
    events.login(principal="mallory", method="oidc-device", ok=False, reason="bad signature"),
    events.login_failed(user="agent:ci", resource="demo", client_addr="127.0.0.1:40000", reason="expired",
                        token_id="t0"),
    events.token_exchange(principal="agent:ci", issuer="https://token.actions.githubusercontent.com"),
    events.access_requested(request_id="r1", principal="agent:ci", resource="demo", role="readwrite",
                            reason="fix invoice", ttl_seconds=1800),
    events.approval_vote(approval_id="a1", approver="alice@example.com", approve=True),
    events.access_granted(request_id="r1", principal="agent:ci", resource="demo", role="readwrite", token_id="t1"),
    events.token_issued(token_id="t1", principal="agent:ci", groups=["ai-agents"], resource="demo",
                        role="readwrite", expires_at=T0, reusable=True),
    events.session_started(session_id="s1", principal="agent:ci", groups=["ai-agents"], resource="demo",
                           role="readwrite", token_id="t1", client_addr="[::1]:50123", application_name="psql",
                           intent="fix invoice"),
    events.statement(session_id="s1", principal="agent:ci", client_addr="[::1]:50123", seq=1,
                     sql="select email from customers", decision="allow", started_at=T0, rows=3,
                     masked_values=3, duration_ms=1.25),
    events.statement(session_id="s1", seq=2, sql="drop table customers", decision="block", started_at=T0,
                     rule="ddl", reason="no drops", error_sqlstate="42501"),
    events.lease(action="issue", lease_id="database/creds/rw/abc", resource="demo", role="readwrite",
                 session_id="s1", ttl_seconds=3600),
    events.lease(action="renew", lease_id="database/creds/rw/abc", resource="demo", role="readwrite"),
    events.lease(action="revoke", lease_id="database/creds/rw/abc", resource="demo", role="readwrite"),
    events.session_ended(session_id="s1", reason="client terminated", statements=2, bytes_in=10, bytes_out=20),
    events.token_revoked(token_id="t1", actor="alice@example.com"),
    events.config_changed(actor="admin", what="api.tokens"),
    events.policy_reloaded(resource="demo", source="agent-safe"),
    events.audit_pruned(archive="a.jsonl.gz", through_seq=10, through_hash="ab" * 32, records=10),
]


def chain_of(evs: list[events.AuditEvent]) -> list[AuditRecord]:
    out, prev = [], GENESIS_HASH
    for i, e in enumerate(evs, 1):
        r = seal(seq=i, id=f"id{i}", ts=T0 + timedelta(seconds=i), type=e.type, actor=e.actor,
                 session_id=e.session_id, data=e.data, prev_hash=prev)
        out.append(r)
        prev = r.hash
    return out


async def aiter_of(records: list[AuditRecord]) -> AsyncIterator[AuditRecord]:
    for r in records:
        yield r


async def rendered(records: list[AuditRecord], fmt: str) -> str:
    return "".join([chunk async for chunk in render(aiter_of(records), fmt)])


def reverify(records: list[AuditRecord]) -> bool:
    v = ChainVerifier()
    return all(v.feed(r) is None for r in records) and v.checked == len(records)


def _from_json(d: dict) -> AuditRecord:
    return AuditRecord(d["seq"], d["id"], datetime.fromisoformat(d["ts"]), d["type"], d["actor"] or None,
                       d["session_id"] or None, d["data"], d["prev_hash"], d["hash"])


async def test_ocsf_export_validates_and_maps_to_the_right_classes() -> None:
    expected_class = {
        "auth.login": 3002, "auth.token_exchange": 3002, "statement": 6005, "session.start": 6005,
        "session.end": 6005, "auth.login_failed": 3002,
    }
    records = chain_of(SAMPLES)
    lines = (await rendered(records, "ocsf")).splitlines()
    assert len(lines) == len(records)
    for record, line in zip(records, lines, strict=True):
        event = json.loads(line)
        assert errors(event) == [], (record.type, errors(event))
        assert event["class_uid"] == expected_class.get(record.type, 6003), record.type
        assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
        assert event["category_uid"] == event["class_uid"] // 1000
        assert event["time"] == int(record.ts.timestamp() * 1000)
        assert event["metadata"]["uid"] == record.id and event["unmapped"]["hash"] == record.hash


def test_ocsf_activity_and_status_details() -> None:
    by_type = {r.type + str(r.data.get("seq", "")): to_ocsf(r) for r in chain_of(SAMPLES)}
    allowed, blocked = by_type["statement1"], by_type["statement2"]
    assert allowed["activity_id"] == 4 and allowed["status_id"] == 1
    assert allowed["src_endpoint"] == {"ip": "::1", "port": 50123}
    assert allowed["actor"]["user"]["name"] == "agent:ci"
    assert allowed["query_info"]["query_string"] == "select email from customers"
    assert blocked["status_id"] == 2 and blocked["severity_id"] == 3 and blocked["status_detail"] == "no drops"
    assert by_type["session.start"]["activity_id"] == 3
    assert by_type["auth.login"]["activity_id"] == 1 and by_type["auth.login"]["user"]["name"]
    assert by_type["token.revoke"]["activity_id"] == 4 and by_type["token.issue"]["activity_id"] == 1


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        ("10.0.0.7:51234", {"ip": "10.0.0.7", "port": 51234}),
        ("[2001:db8::1]:5432", {"ip": "2001:db8::1", "port": 5432}),
        ("::1", {"ip": "::1"}),
        ("db.internal:6432", {"hostname": "db.internal", "port": 6432}),
        ("/tmp/.s.PGSQL.6432", {"name": "/tmp/.s.PGSQL.6432"}),
        (None, {"name": "jitgate"}),
    ],
)
def test_endpoint_parsing(addr: str | None, expected: dict) -> None:
    assert endpoint(addr) == expected


async def test_jsonl_export_reverifies() -> None:
    records = chain_of(SAMPLES)
    lines = (await rendered(records, "jsonl")).splitlines()
    back = [_from_json(json.loads(line)) for line in lines]
    assert back == records and reverify(back)


async def test_csv_export_reverifies() -> None:
    records = chain_of(SAMPLES)
    rows = list(csv.DictReader(io.StringIO(await rendered(records, "csv"))))
    back = [_from_json({**row, "seq": int(row["seq"]), "data": json.loads(row["data"])}) for row in rows]
    assert back == records and reverify(back)


async def test_large_export_runs_in_bounded_memory(tmp_path: Path) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/big.db")
    try:
        n = 1_600
        for start in range(0, n, 800):
            await store.audit.append_audit(
                *(events.statement(session_id="s", seq=i, sql=f"select {i} from t where x = 'padding-{i:08d}'",
                                   decision="allow", started_at=T0, rows=i, masked_values=i % 3)
                  for i in range(start, start + 800))
            )
        count = written = early_peak = 0
        tracemalloc.start()
        try:
            async for chunk in render(store.audit.iter_audit(chunk=50), "ocsf"):
                count += chunk.count("\n")
                written += len(chunk)
                if not early_peak and count >= n // 4:
                    # The first quarter sets the baseline (caches, a chunk of rows, a text chunk).
                    early_peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.reset_peak()
            late_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert count == n
        # Three times as many records again need no more memory, and the whole export is
        # several times what was ever held: records are streamed, not gathered.
        assert early_peak and late_peak < early_peak * 1.5, (early_peak, late_peak)
        assert written > 3 * max(early_peak, late_peak), (written, early_peak, late_peak)
    finally:
        await store.close()
