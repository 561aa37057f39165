"""Prometheus metrics, in a registry of jitgate's own (served by the API at /metrics).

Who increments what:
- `Recorder.record_statement` and `record_row`: STATEMENT_TALLY (statements by decision,
  masked values, statement durations);
- `Recorder.start_session` / `end_session`: SESSIONS_ACTIVE;
- the proxy: PROXY_BYTES (per direction), AUTH_FAILURES (label: `AuthError.reason`) and
  EGRESS_LIMITS (statements cut by `resources.<name>.egress`).

Every metric here has a test that makes its event happen and sees it move (the mapping in
tests/broker/test_metrics.py fails for a metric declared without one).
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS_ACTIVE = Gauge(
    "jitgate_sessions_active", "Proxy sessions currently open", registry=REGISTRY
)


class ByteTally(Protocol):
    """What a relay counts as it goes (proxy.relay.Relay): plain ints, one addition per read."""

    bytes_from_client: int
    bytes_from_upstream: int


class RelayedBytes(Collector):
    """`jitgate_proxy_bytes_total{direction}`: bytes the proxy read from clients
    (client_to_server) and from upstreams (server_to_client) while relaying sessions.

    The data path pays no metric call: each relay adds the size of every socket read to an
    int of its own, and this collector sums the live relays' ints with what ended sessions
    counted when Prometheus scrapes. So a scrape is exact and current (no flush interval, no
    lag) and the counter never goes back: a session's bytes move from live to ended under
    the lock that the sum also takes.
    """

    NAME = "jitgate_proxy_bytes"
    HELP = "Bytes relayed by the proxy; direction is client_to_server or server_to_client"
    # The series it exposes and their labels (what a dashboard may query: tests/infra).
    SERIES = {"jitgate_proxy_bytes_total": {"direction"}}

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()  # the scrape runs on the metrics server's thread
        self._live: set[ByteTally] = set()
        self._ended_from_client = 0
        self._ended_from_upstream = 0
        registry.register(self)

    def track(self, tally: ByteTally) -> None:
        """Count `tally` from now on (at a relay's start)."""
        with self._lock:
            self._live.add(tally)

    def untrack(self, tally: ByteTally) -> None:
        """Keep what `tally` counted and stop reading it (at a relay's end); idempotent."""
        with self._lock:
            if tally in self._live:
                self._live.discard(tally)
                self._ended_from_client += tally.bytes_from_client
                self._ended_from_upstream += tally.bytes_from_upstream

    def totals(self) -> tuple[int, int]:
        """(client_to_server, server_to_client) so far."""
        with self._lock:
            return (
                self._ended_from_client + sum(t.bytes_from_client for t in self._live),
                self._ended_from_upstream + sum(t.bytes_from_upstream for t in self._live),
            )

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["direction"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        from_client, from_upstream = self.totals()
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["direction"])
        family.add_metric(["client_to_server"], from_client)
        family.add_metric(["server_to_client"], from_upstream)
        yield family


PROXY_BYTES = RelayedBytes(REGISTRY)


class StatementTally(Collector):
    """`jitgate_statements_total{decision}`, `jitgate_masked_values_total` and the
    `jitgate_statement_seconds` histogram, counted in plain ints.

    The recorder counts every statement on the relay's event loop; a prometheus_client
    `Counter.inc` and `Histogram.observe` take a lock each and cost ~1.2 µs a statement
    together, so the hot path adds to these attributes instead (`count`, ~0.3 µs) and this
    collector reads them when Prometheus scrapes: exact and current, and never going back.
    A scrape on the metrics server's thread reads a copy of the dict (copied in one step
    under the GIL) and the bucket list; the count it reports is the sum of the buckets, so
    `_count` and the `+Inf` bucket always agree.
    """

    BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
    SERIES = {
        "jitgate_statements_total": {"decision"},
        "jitgate_masked_values_total": set(),
        "jitgate_statement_seconds_bucket": {"le"},
        "jitgate_statement_seconds_sum": set(),
        "jitgate_statement_seconds_count": set(),
    }

    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions: dict[str, int] = {}
        self.masked = 0
        # buckets[i] counts durations in (BOUNDS[i-1], BOUNDS[i]]; the last one is above 30 s.
        self.buckets = [0] * (len(self.BOUNDS) + 1)
        self.seconds = 0.0
        registry.register(self)

    def count(self, decision: str, masked: int, duration_ms: float | None) -> None:
        """One statement: its decision, the values masked in it, its duration if it ran."""
        decisions = self.decisions
        decisions[decision] = decisions.get(decision, 0) + 1
        if masked:
            self.masked += masked
        if duration_ms is not None:
            seconds = duration_ms / 1000
            self.buckets[bisect_left(self.BOUNDS, seconds)] += 1
            self.seconds += seconds

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily("jitgate_statements", "Statements seen by the proxy, by the decision enforced",
                                labels=["decision"]),
            CounterMetricFamily("jitgate_masked_values", "Result values masked before reaching a client"),
            HistogramMetricFamily("jitgate_statement_seconds",
                                  "Time from a statement's arrival to its completion, as the proxy saw it"),
        )

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        statements, masked, seconds = self._families()
        for decision, n in dict(self.decisions).items():
            statements.add_metric([decision], n)
        masked.add_metric([], self.masked)
        buckets, total = [], 0
        for bound, n in zip((*self.BOUNDS, math.inf), list(self.buckets), strict=True):
            total += n
            buckets.append((floatToGoString(bound), total))
        seconds.add_metric([], buckets, self.seconds)
        yield from (statements, masked, seconds)


STATEMENT_TALLY = StatementTally(REGISTRY)
AUTH_FAILURES = Counter(
    "jitgate_auth_failures_total",
    "Refused gateway logins, by the check that failed (malformed, unknown, expired, revoked, wrong_resource, "
    "unknown_resource, tls_required, session_cap, ...)",
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
    "Vault/OpenBao calls that failed, by kind (unreachable, refused; late: issued after its caller left, revoked;"
    " revoke_stuck: a lease whose revocation failed 5 times in a row, counted once)",
    ["kind"],
    registry=REGISTRY,
)
SLACK_ERRORS = Counter(
    "jitgate_slack_errors_total",
    "Slack Web API calls that failed after their retries, by method",
    ["method"],
    registry=REGISTRY,
)


class FastPathTally(Collector):
    """`jitgate_fast_path_batches_total{outcome}`: repeated batches forwarded at once by the
    fast path (proxy.fastpath), answered as expected (`answered`) or handed back to the full
    machine before anything was relayed (`fell_back`).

    Plain ints the session machine adds to (once per statement on the fast path, where a
    locked `Counter.inc` cost ~0.4 µs), read when Prometheus scrapes, as `StatementTally`.
    """

    NAME = "jitgate_fast_path_batches"
    SERIES = {"jitgate_fast_path_batches_total": {"outcome"}}
    HELP = (
        "Repeated batches forwarded at once by the fast path (proxy.fastpath): answered as expected"
        " (outcome=answered), or handed back to the full machine before anything was relayed (fell_back)"
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.answered = 0
        self.fell_back = 0
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.NAME, self.HELP, labels=["outcome"])

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.NAME, self.HELP, labels=["outcome"])
        family.add_metric(["answered"], self.answered)
        family.add_metric(["fell_back"], self.fell_back)
        yield family


FAST_PATH = FastPathTally(REGISTRY)

DESYNCS = Counter(
    "jitgate_session_desync_total",
    "Sessions ended because the upstream sent a message the gateway's model of the session did not"
    " expect, or reported a lexing setting the gateway pins (SQLSTATE 08P01)",
    registry=REGISTRY,
)


def render_latest() -> tuple[bytes, str]:
    """The exposition text and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
