"""Audit records as OCSF 1.x events (schema version `OCSF_VERSION`).

Which class an event becomes:
  auth.*                      Authentication (3002, IAM 3): Logon 1, Authentication Ticket 3
  session.*, statement        Datastore Activity (6005, Application Activity 6): Connect 3,
                              Query 4, Other 99 ("Disconnect")
  everything else             API Activity (6003, Application Activity 6): Create 1, Read 2,
                              Update 3, Delete 4 (token, access, approval, lease, config, ...)

`type_uid` is `class_uid * 100 + activity_id`; `time` is epoch milliseconds. The chain
position and hashes go in `metadata` (`uid`, `sequence`) and `unmapped`, so an OCSF
consumer can still check a record against the chain.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC
from typing import Any

from broker.audit.chain import AuditRecord

OCSF_VERSION = "1.3.0"
PRODUCT = {"name": "jitgate", "vendor_name": "jitgate"}

AUTHENTICATION = (3002, 3, "Authentication", "Identity & Access Management")
API_ACTIVITY = (6003, 6, "API Activity", "Application Activity")
DATASTORE_ACTIVITY = (6005, 6, "Datastore Activity", "Application Activity")

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
}

SEVERITY_INFORMATIONAL = 1
SEVERITY_MEDIUM = 3
STATUS_SUCCESS = 1
STATUS_FAILURE = 2


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
    if port and port.isdigit():
        out["port"] = int(port)
    return out


def to_ocsf(record: AuditRecord) -> dict[str, Any]:
    data = record.data
    if record.type.startswith("auth."):
        cls = AUTHENTICATION
        activity_id, activity = (1, "Logon") if record.type == "auth.login" else (3, "Authentication Ticket")
    elif record.type == "statement":
        cls, activity_id, activity = DATASTORE_ACTIVITY, 4, "Query"
    elif record.type == "session.start":
        cls, activity_id, activity = DATASTORE_ACTIVITY, 3, "Connect"
    elif record.type == "session.end":
        cls, activity_id, activity = DATASTORE_ACTIVITY, 99, "Disconnect"
    else:
        cls = API_ACTIVITY
        verb = _API_VERBS.get(record.type)
        activity_id = _API_ACTIVITY_IDS[verb] if verb else 99
        activity = verb.capitalize() if verb else record.type
    class_uid, category_uid, class_name, category_name = cls

    failed = data.get("ok") is False or data.get("decision") in ("block", "review") or bool(
        data.get("error_sqlstate")
    )
    user: dict[str, Any] = {"name": record.actor or "unknown"}
    if data.get("groups"):
        user["groups"] = [{"name": g} for g in data["groups"]]
    actor: dict[str, Any] = {"user": user}
    if record.session_id:
        actor["session"] = {"uid": record.session_id}

    event: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": class_name,
        "category_uid": category_uid,
        "category_name": category_name,
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": class_uid * 100 + activity_id,
        "time": int(record.ts.astimezone(UTC).timestamp() * 1000),
        "severity_id": SEVERITY_MEDIUM if failed else SEVERITY_INFORMATIONAL,
        "status_id": STATUS_FAILURE if failed else STATUS_SUCCESS,
        "metadata": {
            "version": OCSF_VERSION,
            "product": PRODUCT,
            "uid": record.id,
            "sequence": record.seq,
            "log_name": "jitgate.audit",
            "event_code": record.type,
        },
        "actor": actor,
        "src_endpoint": endpoint(data.get("client_addr")),
        "unmapped": {"prev_hash": record.prev_hash, "hash": record.hash, "data": data},
    }
    if failed:
        detail = data.get("reason") or data.get("error") or data.get("error_sqlstate")
        if detail:
            event["status_detail"] = str(detail)
    if class_uid == AUTHENTICATION[0]:
        event["user"] = user
        event["auth_protocol"] = str(data.get("method") or data.get("issuer") or "OIDC")
    elif class_uid == DATASTORE_ACTIVITY[0]:
        if data.get("resource"):
            event["database"] = {"name": data["resource"], "type": "PostgreSQL", "type_id": 99}
        if record.type == "statement":
            event["query_info"] = {"query_string": data.get("sql", "")}
            if data.get("duration_ms") is not None:
                event["duration"] = int(data["duration_ms"])
    else:
        event["api"] = {"operation": record.type, "service": {"name": "jitgate-broker"}}
    return event
