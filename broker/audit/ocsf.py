"""Audit records as OCSF events, schema version `OCSF_VERSION` (no profiles, no extensions).

Which class an event becomes:
  auth.*                      Authentication (3002, IAM 3): Logon 1 (`auth.login`, and
                              `auth.login_failed` with status Failure), Authentication
                              Ticket 3 (`auth.token_exchange`)
  session.*, statement        Datastore Activity (6005, Application Activity 6): Connect 3,
                              Query 4, Other 99 ("Disconnect")
  everything else             API Activity (6003, Application Activity 6): Create 1, Read 2,
                              Update 3, Delete 4, Other 99 (token, access, approval, lease,
                              config, policy, prune, checkpoint)

Every event validates against the compiled OCSF schema of that version
(`infra/ocsf/`, made by `tools/ocsf_schema.py`; tests/broker/audit/test_ocsf.py checks a
record of every type in `events.EVENT_TYPES`): Authentication names the `service` logged
into, Datastore Activity names the `database` (the record's own `resource`: statements and
session ends carry it; for records written before they did, the resource of the session's
start, remembered by `OcsfMapper` across an export, "unknown" when the start is not in it),
API Activity its `api` and `actor`.

`status` is the outcome of what the record describes, never the policy decision alone:
Failure for a refused login or token exchange (`ok` false), a statement blocked, refused
under review (its refusal's SQLSTATE in `status_code`) or failed in the database, and an
approval or access request that ended denied, expired or cancelled (severity Low for the
last two: nobody said no); a reviewed statement that ran under its approval is a Success.
A record's approval id is `metadata.correlation_uid`: the approval's request, votes and
decision and the statements it let run or refused share it.

`type_uid` is `class_uid * 100 + activity_id`; `time` is epoch milliseconds. The chain
position goes in `metadata` (`uid`, `sequence`) and the hashes and the record's own `data`
in `unmapped`, so an OCSF consumer can still check a record against the chain.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.audit.chain import AuditRecord

OCSF_VERSION = "1.3.0"
PRODUCT = {"name": "jitgate", "vendor_name": "jitgate"}

AUTHENTICATION = (3002, 3, "Authentication", "Identity & Access Management")
API_ACTIVITY = (6003, 6, "API Activity", "Application Activity")
DATASTORE_ACTIVITY = (6005, 6, "Datastore Activity", "Application Activity")
CLASSES = (AUTHENTICATION, API_ACTIVITY, DATASTORE_ACTIVITY)

_API_ACTIVITY_IDS = {"create": 1, "read": 2, "update": 3, "delete": 4}
# Which API activity each broker event is; unlisted types are Other (99).
_API_VERBS = {
    "token.issue": "create",
    "token.revoke": "delete",
    "access.request": "create",
    "access.grant": "create",
    "approval.request": "create",
    "approval.vote": "update",
    "approval.decide": "update",
    "lease.issue": "create",
    "lease.renew": "update",
    "lease.revoke": "delete",
    "config.change": "update",
    "policy.reload": "update",
    "audit.prune": "delete",
    "audit.checkpoint": "create",
}
# Which record fields name the thing an API event is about, and what kind of thing it is.
_API_RESOURCES = (
    ("token_id", "gateway token"),
    ("request_id", "access request"),
    ("approval_id", "approval"),
    ("lease_id", "credential lease"),
    ("archive", "audit archive"),
    ("resource", "database"),
)
# OCSF auth_protocol_id by the login method a record names (the caption must be the schema's).
_AUTH_PROTOCOLS = {"oidc": (4, "OpenID"), "oidc-device": (4, "OpenID"), "console": (4, "OpenID")}
_GATEWAY_TOKEN_AUTH = (99, "jitgate gateway token (PostgreSQL password message)")

SEVERITY_INFORMATIONAL = 1
SEVERITY_LOW = 2
SEVERITY_MEDIUM = 3
STATUS_SUCCESS = 1
STATUS_FAILURE = 2
_STATUS = {STATUS_SUCCESS: "Success", STATUS_FAILURE: "Failure"}
_SEVERITY = {SEVERITY_INFORMATIONAL: "Informational", SEVERITY_LOW: "Low", SEVERITY_MEDIUM: "Medium"}
# A request or approval that ended with nobody saying no is less alarming than a denial.
_SEVERITY_BY_STATUS = {"expired": SEVERITY_LOW, "cancelled": SEVERITY_LOW}
# string_t's max_len in the schema; what is longer is cut (the whole text stays in `unmapped`).
MAX_STRING = 65_535
UNKNOWN = "unknown"


def endpoint(client_addr: str | None) -> dict[str, Any]:
    """A network_endpoint from "host:port", "[v6]:port", a bare host or a socket path."""
    if not client_addr:
        return {"name": "jitgate"}
    host, port = client_addr, None
    if client_addr.startswith("["):
        host, _, rest = client_addr[1:].partition("]")
        port = rest.lstrip(":") or None
    elif client_addr.count(":") == 1:
        host, port = client_addr.split(":")
    out: dict[str, Any] = {}
    try:
        out["ip"] = str(ipaddress.ip_address(host))
    except ValueError:
        out["hostname" if not host.startswith("/") else "name"] = host
    if port and port.isdigit() and int(port) <= 65535:
        out["port"] = int(port)
    return out


def _classify(record_type: str) -> tuple[tuple[int, int, str, str], int, str]:
    """(class, activity_id, activity_name) of a record type."""
    if record_type.startswith("auth."):
        if record_type == "auth.token_exchange":
            return AUTHENTICATION, 3, "Authentication Ticket"
        return AUTHENTICATION, 1, "Logon"
    if record_type == "statement":
        return DATASTORE_ACTIVITY, 4, "Query"
    if record_type == "session.start":
        return DATASTORE_ACTIVITY, 3, "Connect"
    if record_type == "session.end":
        return DATASTORE_ACTIVITY, 99, "Disconnect"
    verb = _API_VERBS.get(record_type)
    if verb:
        return API_ACTIVITY, _API_ACTIVITY_IDS[verb], verb.capitalize()
    return API_ACTIVITY, 99, record_type


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a record's outcome is a failure: OCSF `severity_id`, `status_detail`, `status_code`."""

    severity_id: int
    detail: str | None = None
    code: str | None = None


def _statement_failure(data: dict[str, Any]) -> Failure | None:
    """Blocked, refused under review (denied, expired, cancelled, still pending: the refusal's
    SQLSTATE) or failed in the database (its SQLSTATE). A reviewed statement that ran, under
    its approval, is a success."""
    sqlstate = data.get("error_sqlstate")
    # The rule's reason says why it was held or refused; the SQLSTATE goes in status_code.
    reason = data.get("reason") if data.get("decision") in ("block", "review") else None
    if sqlstate:
        return Failure(SEVERITY_MEDIUM, str(reason or f"SQLSTATE {sqlstate}"), str(sqlstate))
    if data.get("decision") == "block":
        return Failure(SEVERITY_MEDIUM, str(reason or "blocked"))
    return None


def _failure(record: AuditRecord) -> Failure | None:
    """What failed, by the outcome the record describes; None for a success."""
    data = record.data
    if record.type == "statement":
        return _statement_failure(data)
    if record.type == "approval.decide" and data.get("status") not in (None, "approved"):
        status, reason = data["status"], data.get("reason")
        return Failure(_SEVERITY_BY_STATUS.get(status, SEVERITY_MEDIUM),
                       f"approval {status}" + (f": {reason}" if reason else ""))
    if record.type == "access.request" and data.get("status") not in (None, "granted", "pending"):
        # The record's `reason` is the requester's justification, not why the request failed.
        status = data["status"]
        return Failure(_SEVERITY_BY_STATUS.get(status, SEVERITY_MEDIUM), f"access request {status}")
    if record.type == "auth.login_failed" or data.get("ok") is False:
        detail = data.get("reason") or data.get("error")
        return Failure(SEVERITY_MEDIUM, str(detail) if detail else None)
    return None


def _user(name: str | None, data: dict[str, Any]) -> dict[str, Any]:
    user: dict[str, Any] = {"name": name or UNKNOWN}
    if data.get("groups"):
        user["groups"] = [{"name": str(g)} for g in data["groups"]]
    return user


def _actor(record: AuditRecord) -> dict[str, Any]:
    actor: dict[str, Any] = {}
    if record.actor:
        actor["user"] = _user(record.actor, record.data)
    if record.session_id:
        actor["session"] = {"uid": record.session_id}
    if not actor:
        actor["app_name"] = "jitgate"  # the gateway itself (a lease, a prune, a checkpoint)
    return actor


def _database(resource: str | None) -> dict[str, Any]:
    return {"name": resource or UNKNOWN, "type": "Relational", "type_id": 1}


class OcsfMapper:
    """Maps the records of one export, in chain order, to OCSF events.

    A record's own `resource` names its database. For older statement and session-end
    records, which lack it, each open session's resource is remembered from its
    `session.start` (at most `max_sessions`, least recently used first out).
    """

    def __init__(self, *, max_sessions: int = 10_000) -> None:
        self._resources: OrderedDict[str, str] = OrderedDict()
        self._max = max_sessions

    def _resource_of(self, record: AuditRecord) -> str | None:
        resource = record.data.get("resource")
        sid = record.session_id
        if sid is None:
            return str(resource) if resource else None
        if record.type == "session.start" and resource:
            self._resources[sid] = str(resource)
            if len(self._resources) > self._max:
                self._resources.popitem(last=False)
        elif not resource:
            resource = self._resources.get(sid)
            if resource is not None:
                self._resources.move_to_end(sid)
        if record.type == "session.end":
            self._resources.pop(sid, None)
        return str(resource) if resource else None

    def map(self, record: AuditRecord) -> dict[str, Any]:
        data = record.data
        cls, activity_id, activity = _classify(record.type)
        class_uid, category_uid, class_name, category_name = cls
        failure = _failure(record)
        status_id = STATUS_FAILURE if failure else STATUS_SUCCESS
        severity_id = failure.severity_id if failure else SEVERITY_INFORMATIONAL

        event: dict[str, Any] = {
            "class_uid": class_uid,
            "class_name": class_name,
            "category_uid": category_uid,
            "category_name": category_name,
            "activity_id": activity_id,
            "activity_name": activity,
            "type_uid": class_uid * 100 + activity_id,
            "time": int(record.ts.astimezone(UTC).timestamp() * 1000),
            "severity_id": severity_id,
            "severity": _SEVERITY[severity_id],
            "status_id": status_id,
            "status": _STATUS[status_id],
            "metadata": {
                "version": OCSF_VERSION,
                "product": PRODUCT,
                "uid": record.id,
                "sequence": record.seq,
                "log_name": "jitgate.audit",
                "event_code": record.type,
            },
            "actor": _actor(record),
            "unmapped": {"prev_hash": record.prev_hash, "hash": record.hash, "data": data},
        }
        if data.get("approval_id"):
            # The approval's request, votes, decision and the statements run under it or
            # refused by it share this: a SIEM joins on it.
            event["metadata"]["correlation_uid"] = str(data["approval_id"])
        if failure is not None:
            if failure.detail:
                event["status_detail"] = failure.detail[:MAX_STRING]
            if failure.code:
                event["status_code"] = failure.code
        resource = self._resource_of(record)
        if class_uid == AUTHENTICATION[0]:
            self._authentication(event, record, resource)
        elif class_uid == DATASTORE_ACTIVITY[0]:
            event["src_endpoint"] = endpoint(data.get("client_addr"))
            event["database"] = _database(resource)
            if record.type == "statement":
                event["query_info"] = {
                    "uid": str(data.get("fingerprint") or f"{record.session_id}/{data.get('seq')}"),
                    "query_string": str(data.get("sql") or "")[:MAX_STRING],
                }
                if data.get("duration_ms") is not None:
                    event["duration"] = int(data["duration_ms"])
        else:
            event["src_endpoint"] = endpoint(data.get("client_addr"))
            event["api"] = {"operation": record.type, "service": {"name": "jitgate-broker"}}
            resources = [
                {"uid": str(data[key]), "type": kind} for key, kind in _API_RESOURCES if data.get(key)
            ]
            if resources:
                event["resources"] = resources
        return event

    @staticmethod
    def _authentication(event: dict[str, Any], record: AuditRecord, resource: str | None) -> None:
        data = record.data
        if record.type == "auth.login_failed":
            # Who the client said it was; what it tried to reach is the proxy's resource.
            event["user"] = _user(data.get("user"), {})
            via = str(data.get("via") or "proxy")
            event["service"] = {"name": f"jitgate-{via}"}
            protocol_id, protocol = _GATEWAY_TOKEN_AUTH if via == "proxy" else _auth_protocol(data)
            event["message"] = f"login to {resource or 'jitgate'} refused: {data.get('reason')}"[:MAX_STRING]
            if data.get("suppressed"):
                # A flood's summary (broker.audit.logins): how many, from which network, when.
                event["count"] = int(data["suppressed"])
                event["message"] = (f"{data['suppressed']} logins to {resource or 'jitgate'} from "
                                    f"{data.get('network') or 'anywhere'} refused: {data.get('reason')}")[:MAX_STRING]
                for key, attr in (("first_seen", "start_time"), ("last_seen", "end_time")):
                    if (ms := _epoch_ms(data.get(key))) is not None:
                        event[attr] = ms
        else:
            event["user"] = _user(record.actor, data)
            event["service"] = {"name": "jitgate-broker"}
            protocol_id, protocol = _auth_protocol(data)
        event["auth_protocol_id"] = protocol_id
        event["auth_protocol"] = protocol
        if data.get("client_addr"):
            event["src_endpoint"] = endpoint(data["client_addr"])


def _epoch_ms(text: object) -> int | None:
    try:
        return int(datetime.fromisoformat(str(text)).timestamp() * 1000) if text else None
    except ValueError:
        return None


def _auth_protocol(data: dict[str, Any]) -> tuple[int, str]:
    method = str(data.get("method") or "")
    if method in _AUTH_PROTOCOLS:
        return _AUTH_PROTOCOLS[method]
    if data.get("issuer"):
        return 4, "OpenID"  # a workload identity token exchanged (OIDC)
    return 99, method or UNKNOWN


def to_ocsf(record: AuditRecord) -> dict[str, Any]:
    """One record on its own (a statement's database is only known from its own data)."""
    return OcsfMapper().map(record)
