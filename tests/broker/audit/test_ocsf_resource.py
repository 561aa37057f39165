"""Statement and session-end records carry their resource: the OCSF export names the
database from the record itself, with no session start in the export (issue 16)."""

from __future__ import annotations

from broker.audit import events
from broker.audit.ocsf import OcsfMapper
from tests.broker.audit.ocsf_schema import errors
from tests.broker.audit.test_ocsf import T0, chain_of


def test_a_record_names_its_own_database_without_its_session_start() -> None:
    records = chain_of([
        events.statement(session_id="s9", seq=1, sql="select 1", decision="allow", started_at=T0, resource="ledger",
                         approval_id="a-1", results_digest="0" * 64),
        events.session_ended(session_id="s9", reason="client terminated", resource="ledger"),
    ])
    mapper = OcsfMapper()
    stmt, end = (mapper.map(r) for r in records)
    assert stmt["database"]["name"] == end["database"]["name"] == "ledger"
    assert stmt["unmapped"]["data"]["approval_id"] == "a-1"
    assert errors(stmt) == [] and errors(end) == []
