"""Prometheus metrics, in a registry of jitgate's own (served by the API at /metrics).

Who increments what:
- `Recorder.record_statement`: STATEMENTS, MASKED_VALUES, STATEMENT_SECONDS;
- `Recorder.start_session` / `end_session`: SESSIONS_ACTIVE;
- the proxy: PROXY_BYTES (per direction), AUTH_FAILURES (label: `AuthError.reason`) and
  EGRESS_LIMITS (statements cut by `resources.<name>.egress`).
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS_ACTIVE = Gauge(
    "jitgate_sessions_active", "Proxy sessions currently open", registry=REGISTRY
)
STATEMENTS = Counter(
    "jitgate_statements_total",
    "Statements seen by the proxy, by the decision enforced",
    ["decision"],
    registry=REGISTRY,
)
MASKED_VALUES = Counter(
    "jitgate_masked_values_total",
    "Result values masked before reaching a client",
    registry=REGISTRY,
)
PROXY_BYTES = Counter(
    "jitgate_proxy_bytes_total",
    "Bytes relayed by the proxy; direction is client_to_server or server_to_client",
    ["direction"],
    registry=REGISTRY,
)
STATEMENT_SECONDS = Histogram(
    "jitgate_statement_seconds",
    "Time from a statement's arrival to its completion, as the proxy saw it",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
AUTH_FAILURES = Counter(
    "jitgate_auth_failures_total",
    "Refused gateway credentials, by reason (malformed, unknown, expired, ...)",
    ["reason"],
    registry=REGISTRY,
)
RECORDER_PENDING = Gauge(
    "jitgate_recorder_pending",
    "Statement records waiting to be written to the store",
    registry=REGISTRY,
)
RECORDER_DROPPED = Counter(
    "jitgate_recorder_dropped_total",
    "Statement records lost: refused by the store as invalid, or over the hard buffer limit",
    ["cause"],
    registry=REGISTRY,
)
RECORDER_FLUSH_FAILURES = Counter(
    "jitgate_recorder_flush_failures_total",
    "Failed attempts to write a batch of statement records (each is retried)",
    registry=REGISTRY,
)
EGRESS_LIMITS = Counter(
    "jitgate_egress_limit_total",
    "Statements cut by a resource's egress limit, by resource and limit (e.g. max_rows_per_statement)",
    ["resource", "limit"],
    registry=REGISTRY,
)
SESSION_CAP_REFUSALS = Counter(
    "jitgate_session_cap_refusals_total",
    "Connections refused because the agent or token already had its maximum of concurrent sessions (53300)",
    ["resource", "limit"],
    registry=REGISTRY,
)
APPROVALS_OPENED = Counter(
    "jitgate_approvals_opened_total",
    "Approval requests created, by kind (statement, access)",
    ["kind"],
    registry=REGISTRY,
)
APPROVALS_DECIDED = Counter(
    "jitgate_approvals_decided_total",
    "Approval requests that left pending, by kind and outcome (approved, denied, expired, cancelled)",
    ["kind", "status"],
    registry=REGISTRY,
)
APPROVAL_VOTES = Counter(
    "jitgate_approval_votes_total",
    "Votes cast, by channel (slack, api, console) and result (counted, duplicate, refused code)",
    ["via", "result"],
    registry=REGISTRY,
)
APPROVAL_SECONDS = Histogram(
    "jitgate_approval_seconds",
    "Time from an approval request to its decision, by outcome",
    ["status"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600),
    registry=REGISTRY,
)
VAULT_ERRORS = Counter(
    "jitgate_vault_errors_total",
    "Vault/OpenBao calls that failed, by kind (unreachable, refused; late: issued after its caller left, revoked)",
    ["kind"],
    registry=REGISTRY,
)
SLACK_ERRORS = Counter(
    "jitgate_slack_errors_total",
    "Slack Web API calls that failed after their retries, by method",
    ["method"],
    registry=REGISTRY,
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

DESYNCS = Counter(
    "jitgate_session_desync_total",
    "Sessions ended because the upstream sent a message the gateway's model of the session did not"
    " expect, or reported a lexing setting the gateway pins (SQLSTATE 08P01)",
    registry=REGISTRY,
)
