"""Every audit record type jitgate can write exports as an OCSF event that the real OCSF
schema (the version jitgate claims, compiled from the OCSF repository) accepts; and the
validation is not vacuous: it refuses events missing what the schema requires."""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import events
from broker.audit.chain import GENESIS_HASH, AuditRecord, seal
from broker.audit.ocsf import CLASSES, OCSF_VERSION, OcsfMapper, to_ocsf
from broker.audit.signing import CHECKPOINT, checkpoint_event
from tests.broker.audit.ocsf_schema import SCHEMA, SCHEMA_FILE, errors

ROOT = Path(__file__).resolve().parents[3]
T0 = datetime(2030, 1, 1, 12, tzinfo=UTC)

# Values for parameters whose name says more than their type.
_BY_NAME: dict[str, object] = {
    "client_addr": "203.0.113.7:50123",
    "action": "issue",
    "decision": "allow",
    "shadow_decision": "block",
    "issuer": "https://token.actions.githubusercontent.com",
    "through_hash": "ab" * 32,
}
_BY_TYPE: dict[object, object] = {
    str: "x",
    int: 3,
    float: 1.5,
    bool: True,
    datetime: T0,
    object: "allow",
}


def _value(name: str, annotation: object) -> object:
    if name in _BY_NAME:
        return _BY_NAME[name]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType")) and args:
        return _value(name, args[0])
    origin = typing.get_origin(annotation)
    if origin is dict:
        return {"k": "v"}
    if origin is not None:  # Iterable[str], list[str]
        return ["g1", "g2"]
    if annotation in _BY_TYPE:
        return _BY_TYPE[annotation]
    raise AssertionError(f"no sample value for {name}: {annotation}")


def _calls(constructor: Callable[..., events.AuditEvent]) -> Iterator[dict[str, object]]:
    """Keyword arguments for a constructor: every parameter filled, then only the required."""
    hints = typing.get_type_hints(constructor)
    params = inspect.signature(constructor).parameters
    full = {name: _value(name, hints[name]) for name in params}
    yield full
    yield {name: full[name] for name, p in params.items() if p.default is inspect.Parameter.empty}


def all_samples() -> list[events.AuditEvent]:
    """A record of every type in `events.EVENT_TYPES`, built by its own constructor."""
    out: list[events.AuditEvent] = []
    for record_type, constructor in events.EVENT_TYPES.items():
        if constructor is None:
            assert record_type == CHECKPOINT
            out.append(checkpoint_event(Ed25519PrivateKey.generate(), seq=1, hash_=GENESIS_HASH))
            continue
        for kwargs in _calls(constructor):
            if record_type.startswith("lease."):
                kwargs = {**kwargs, "action": record_type.split(".", 1)[1]}
            out.append(constructor(**kwargs))
    # What the constructors' defaults do not show: failures.
    out += [
        events.login(principal="mallory", method="oidc-device", ok=False, reason="bad signature"),
        events.token_exchange(principal="unverified", issuer="unverified", ok=False, reason="expired"),
        events.statement(session_id="s1", seq=9, sql="drop table t", decision="block", started_at=T0,
                         reason="no drops", error_sqlstate="42501"),
        events.login_failed(user="", resource=None, client_addr=None, reason="unknown_resource"),
        events.login_failed(user="agent:ci", resource="demo", client_addr="[2001:db8::5]:40000", reason="revoked",
                            token_id="t-1", suppressed=12, network="2001:db8::/64", first_seen=T0,
                            last_seen=T0 + timedelta(seconds=3)),
        events.statement(session_id="s1", seq=10, sql="update t set a = 1", decision="review", started_at=T0,
                         reason="writes need review", approval_id="ap-1", rows=1),
        events.statement(session_id="s1", seq=11, sql="update t set a = 2", decision="review", started_at=T0,
                         reason="writes need review", approval_id="ap-2", error_sqlstate="42501"),
        events.approval_decided(approval_id="ap-2", status="denied", actor="alice", reason="too broad"),
        events.access_requested(request_id="r-1", principal="agent:ci", resource="demo", role="rw", reason="x",
                                status="denied"),
        events.policy_reloaded(resource=None, source="x.yaml", ok=False, error="bad rule"),
    ]
    return out


def chain_of(evs: list[events.AuditEvent]) -> list[AuditRecord]:
    out, prev = [], GENESIS_HASH
    for i, e in enumerate(evs, 1):
        r = seal(seq=i, id=f"id{i}", ts=T0 + timedelta(seconds=i), type=e.type, actor=e.actor,
                 session_id=e.session_id, data=e.data, prev_hash=prev)
        out.append(r)
        prev = r.hash
    return out


def test_every_record_type_exports_as_valid_ocsf() -> None:
    records = chain_of(all_samples())
    assert {r.type for r in records} == set(events.EVENT_TYPES)
    mapper = OcsfMapper()
    for record in records:
        event = mapper.map(record)
        assert errors(event) == [], (record.type, record.data)
        assert json.loads(json.dumps(event)) == event  # plain JSON


def test_every_audit_event_the_code_builds_is_registered() -> None:
    """Record types written outside the constructors (a literal or a constant) are in the
    registry too, so the test above covers them."""
    found: set[str] = set()
    for path in [*(ROOT / "broker").rglob("*.py"), *(ROOT / "proxy").rglob("*.py")]:
        text = path.read_text()
        found.update(re.findall(r'AuditEvent\(\s*"([a-z_.]+)"', text))
        found.update(re.findall(r'^[A-Z_]+ = "([a-z_]+\.[a-z_]+)"', text, re.M) if "AuditEvent(" in text else [])
    assert found and found <= set(events.EVENT_TYPES), found - set(events.EVENT_TYPES)


def test_the_schema_is_the_version_claimed() -> None:
    assert SCHEMA["x-ocsf-version"] == OCSF_VERSION and SCHEMA_FILE.name == f"ocsf-{OCSF_VERSION}.schema.json"
    assert re.fullmatch(r"[0-9a-f]{40}", SCHEMA["x-ocsf-commit"])
    assert sorted(SCHEMA["properties"]["class_uid"]["enum"]) == sorted(c[0] for c in CLASSES)
    event = to_ocsf(chain_of([events.token_revoked(token_id="t1", actor="alice")])[0])
    assert errors(event) == []
    assert errors({**event, "metadata": {**event["metadata"], "version": "1.4.0"}})


def _statement() -> dict[str, Any]:
    records = chain_of([
        events.session_started(session_id="s1", principal="agent:ci", groups=["ai"], resource="demo", role="ro",
                               token_id="t1", client_addr="[::1]:50123", application_name="psql", intent=None),
        events.statement(session_id="s1", principal="agent:ci", client_addr="[::1]:50123", seq=1,
                         sql="select 1", decision="allow", started_at=T0, rows=1),
    ])
    mapper = OcsfMapper()
    mapper.map(records[0])
    return mapper.map(records[1])


def _failed_login() -> dict[str, Any]:
    return to_ocsf(chain_of([events.login_failed(user="bob", resource="demo", client_addr="127.0.0.1:5555",
                                                 reason="unknown")])[0])


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(event))
    node = out
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return out


def _with(event: dict[str, Any], value: object, *path: str) -> dict[str, Any]:
    out = json.loads(json.dumps(event))
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("make", "broken", "why"),
    [
        # "at least one of" constraints, class level
        (_statement, lambda e: _without(e, "database"), "database, databucket or table"),
        (_failed_login, lambda e: _without(e, "service"), "service or dst_endpoint"),
        # ... and object level
        (_statement, lambda e: _with(e, {"port": 5}, "src_endpoint"), "an endpoint names a host"),
        (_statement, lambda e: _with(e, {"app_uid_x": "a"}, "actor"), "an actor is someone"),
        (_statement, lambda e: _with(e, {"groups": []}, "actor", "user"), "a user has a name or uid"),
        # required attributes, top level and nested
        (_statement, lambda e: _without(e, "class_uid"), "class_uid"),
        (_statement, lambda e: _without(e, "actor"), "actor is required for Datastore Activity"),
        (_failed_login, lambda e: _without(e, "user"), "user is required for Authentication"),
        (_statement, lambda e: _without(e, "metadata", "product", "vendor_name"), "metadata.product.vendor_name"),
        (_statement, lambda e: _without(e, "database", "type_id"), "database.type_id"),
        (_statement, lambda e: _without(e, "query_info", "query_string"), "query_info.query_string"),
        # enum ids and their captions
        (_statement, lambda e: _with(e, 42, "activity_id"), "activity_id"),
        (_statement, lambda e: _with(e, 3, "category_uid"), "category_uid"),
        (_statement, lambda e: _with(e, 600542, "type_uid"), "type_uid"),
        (_statement, lambda e: _with(e, 7, "severity_id"), "severity_id"),
        (_statement, lambda e: _with(e, 5, "status_id"), "status_id"),
        (_statement, lambda e: _with(e, "Read", "activity_name"), "activity_name is activity_id's caption"),
        (_failed_login, lambda e: _with(e, "Success", "status"), "status is status_id's caption"),
        # types and unknown attributes
        (_statement, lambda e: _with(e, "not-an-ip", "src_endpoint", "ip"), "ip_t"),
        (_statement, lambda e: _with(e, 70000, "src_endpoint", "port"), "port_t range"),
        (_statement, lambda e: _with(e, "soon", "time"), "timestamp_t"),
        (_statement, lambda e: _with(e, "x", "not_an_ocsf_attribute"), "unknown attribute"),
        (_statement, lambda e: _with(e, 4001, "class_uid"), "a class jitgate does not emit"),
    ],
)
def test_the_validator_refuses_what_ocsf_refuses(
    make: Callable[[], dict[str, Any]], broken: Callable[[dict[str, Any]], dict[str, Any]], why: str
) -> None:
    event = make()
    assert errors(event) == []
    assert errors(broken(event)), why


def test_datastore_events_name_their_database_from_the_session_start() -> None:
    records = chain_of([
        events.session_started(session_id="s1", principal="agent:ci", groups=[], resource="billing", role="ro",
                               token_id="t1", client_addr="10.0.0.1:4000", application_name=None, intent=None),
        events.statement(session_id="s1", seq=1, sql="select 1", decision="allow", started_at=T0,
                         fingerprint="fp1"),
        events.session_ended(session_id="s1", reason="client terminated"),
        events.statement(session_id="s2", seq=1, sql="select 2", decision="allow", started_at=T0),
    ])
    mapper = OcsfMapper()
    start, stmt, end, orphan = (mapper.map(r) for r in records)
    assert start["database"]["name"] == stmt["database"]["name"] == end["database"]["name"] == "billing"
    assert stmt["query_info"] == {"uid": "fp1", "query_string": "select 1"}
    # A statement whose session started before the export: the database is said to be unknown.
    assert orphan["database"]["name"] == "unknown" and orphan["query_info"]["uid"] == "s2/1"
    assert all(errors(e) == [] for e in (start, stmt, end, orphan))


def test_a_failed_login_is_an_authentication_failure() -> None:
    event = to_ocsf(chain_of([events.login_failed(user="agent:ci", resource="demo", client_addr="10.9.8.7:61000",
                                                  reason="revoked", token_id="tok-1")])[0])
    assert errors(event) == []
    assert (event["class_uid"], event["activity_id"], event["status_id"]) == (3002, 1, 2)
    assert event["status_detail"] == "revoked" and event["user"] == {"name": "agent:ci"}
    assert event["src_endpoint"] == {"ip": "10.9.8.7", "port": 61000}
    assert event["service"] == {"name": "jitgate-proxy"}
    assert event["unmapped"]["data"]["token_id"] == "tok-1"


def test_long_sql_is_cut_to_the_schema_limit_and_kept_whole_in_unmapped() -> None:
    sql = "select '" + "x" * 70_000 + "'"
    mapper = OcsfMapper()
    event = mapper.map(chain_of([events.statement(session_id="s", seq=1, sql=sql, decision="allow",
                                                  started_at=T0)])[0])
    assert errors(event) == []
    assert len(event["query_info"]["query_string"]) == 65_535 and event["unmapped"]["data"]["sql"] == sql

