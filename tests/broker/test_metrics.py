"""Every metric jitgate declares has a test that makes its event happen and sees it move
(`COVERAGE` below, checked against the registries: a metric declared without a test fails
`test_every_declared_metric_has_a_test`), and the tests of the metrics no other file covers:
the proxy's byte tally, the recorder's backlog and losses, the SIEM forwarder, Slack errors.
"""

from __future__ import annotations

import ast
import asyncio
import importlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import metrics
from broker.audit.chain import AuditRecord
from broker.audit.forward import AuditForwarder
from broker.exceptions import StoreUnavailable
from broker.store import Grant, SessionStart, StatementRecord, Store
from broker.store.recorder import Recorder
from broker.store.sessions import SessionRepository

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("broker", "proxy", "workers", "slackapp")
METRIC_TYPES = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum", "RelayedBytes"}

APPROVALS = "tests/broker/approvals/test_store.py::test_metrics_count_requests_votes_and_decision_latency"
MCP = "tests/e2e/test_metrics.py::test_mcp_queries_rows_bytes_and_egress_limits_move"
#: metric family -> the tests that make its event happen and assert it moved (path::function).
COVERAGE: dict[str, tuple[str, ...]] = {
    "jitgate_fast_path_batches": (
        "tests/e2e/test_fastpath.py::test_repeated_statements_go_the_fast_way_and_are_all_recorded",
        "tests/e2e/test_fastpath.py::test_masked_columns_are_masked_on_the_fast_way",
    ),
    "jitgate_sessions_active": (
        "tests/e2e/test_metrics.py::test_sessions_statements_and_durations_move_with_a_session",
        "tests/broker/store/test_recorder.py::test_end_session_writes_statements_first",
    ),
    "jitgate_statements": (
        "tests/e2e/test_metrics.py::test_sessions_statements_and_durations_move_with_a_session",
        "tests/broker/store/test_recorder.py::test_metrics_count_decisions_masking_and_durations",
    ),
    "jitgate_masked_values": (
        "tests/broker/store/test_recorder.py::test_metrics_count_decisions_masking_and_durations",
    ),
    "jitgate_statement_seconds": (
        "tests/e2e/test_metrics.py::test_sessions_statements_and_durations_move_with_a_session",
    ),
    "jitgate_proxy_bytes": (
        "tests/e2e/test_metrics.py::test_proxy_bytes_move_per_direction_with_what_is_relayed",
        "tests/e2e/test_metrics.py::test_a_refused_login_relays_no_bytes",
        "tests/e2e/test_metrics.py::test_every_proxy_worker_serves_its_metrics_on_its_port",
        "tests/broker/test_metrics.py::test_relayed_bytes_count_live_and_ended_sessions_once",
    ),
    "jitgate_auth_failures": ("tests/e2e/test_failed_logins.py::test_a_refused_login_is_one_audit_record",),
    "jitgate_audit_witness": (
        "tests/broker/audit/test_witness.py::test_witnessed_chain_verifies_anchored",
        "tests/broker/audit/test_witness_sinks.py::test_webhook_failure_is_retried_next_run_without_logging_its_secret",
    ),
    "jitgate_recorder_pending": (
        "tests/broker/test_metrics.py::test_recorder_pending_is_the_backlog_during_an_outage",
    ),
    "jitgate_recorder_dropped": ("tests/broker/test_metrics.py::test_recorder_drops_are_counted_by_cause",),
    "jitgate_recorder_flush_failures": (
        "tests/broker/store/test_recorder.py::test_store_outage_loses_nothing_and_turns_unhealthy",
    ),
    "jitgate_egress_limit": (
        "tests/e2e/test_egress.py::test_statement_row_limit_cuts_and_connection_stays_usable",
    ),
    "jitgate_session_cap_refusals": (
        "tests/proxy/test_admission.py::test_the_token_cap_refuses_with_53300_naming_the_limit_not_the_token",
    ),
    "jitgate_approvals_opened": (APPROVALS,),
    "jitgate_approvals_decided": (APPROVALS,),
    "jitgate_approval_votes": (APPROVALS,),
    "jitgate_approval_seconds": (APPROVALS,),
    "jitgate_vault_errors": (
        "tests/broker/credentials/test_vault.py::test_vault_down_is_unavailable_without_secrets",
        "tests/broker/credentials/test_abandoned.py::test_a_lease_issued_after_the_caller_was_cancelled_is_revoked",
        "tests/broker/credentials/test_revocation.py::test_a_revocation_that_keeps_failing_is_an_error_and_a_metric",
    ),
    "jitgate_slack_errors": (
        "tests/broker/test_metrics.py::test_slack_errors_count_failed_deliveries_by_method",
    ),
    "jitgate_session_desync": (
        "tests/proxy/test_metrics.py::test_a_desync_is_counted_once_and_nothing_else_is",
    ),
    "jitgate_audit_forward": (
        "tests/broker/test_metrics.py::test_audit_forwarding_counts_sent_failed_and_dropped",
    ),
    "jitgate_mcp_queries": (MCP,),
    "jitgate_mcp_rows_returned": (MCP,),
    "jitgate_mcp_bytes_returned": (MCP,),
    "jitgate_mcp_egress_limit": (MCP,),
}


def declaring_modules() -> list[str]:
    """Every module of jitgate's packages that declares a metric at module level (found in
    the source, so that a metric in a module no test happened to import is seen too)."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                call = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
                if isinstance(call, ast.Call):
                    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
                    if name in METRIC_TYPES:
                        found.append(".".join(path.relative_to(ROOT).with_suffix("").parts))
                        break
    return found


def declared_families() -> set[str]:
    """Every jitgate metric family in jitgate's registry and in the default one (the MCP
    server's), after importing every module that declares some."""
    for module in declaring_modules():
        importlib.import_module(module)
    names = {family.name for family in metrics.REGISTRY.collect()}
    names |= {f.name for f in prometheus_client.REGISTRY.collect() if f.name.startswith("jitgate_")}
    return names


def test_every_declared_metric_has_a_test() -> None:
    declared = declared_families()
    untested = sorted(declared - set(COVERAGE))
    assert not untested, f"metrics declared without a test in COVERAGE: {untested}"
    stale = sorted(set(COVERAGE) - declared)
    assert not stale, f"COVERAGE names metrics nobody declares: {stale}"


@pytest.mark.parametrize("test_id", sorted({t for tests in COVERAGE.values() for t in tests}))
def test_every_named_test_exists(test_id: str) -> None:
    path, _, function = test_id.partition("::")
    source = ROOT / path
    assert source.is_file(), test_id
    tree = ast.parse(source.read_text(encoding="utf-8"))
    defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    if function == "*":  # a whole file about this metric
        assert any(name.startswith("test_") for name in defined), test_id
        return
    assert function in defined, test_id


def test_declaring_modules_are_found() -> None:
    modules = declaring_modules()
    for module in ("broker.metrics", "broker.audit.forward", "broker.mcp.gateway"):
        assert module in modules


def test_a_metric_without_a_test_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("jitgate_brand_new_total", "x", registry=registry)
    monkeypatch.setattr(metrics, "REGISTRY", registry)
    with pytest.raises(AssertionError, match="jitgate_brand_new"):
        test_every_declared_metric_has_a_test()


def sample(name: str, registry: prometheus_client.CollectorRegistry | None = None, **labels: str) -> float:
    return (registry or metrics.REGISTRY).get_sample_value(name, labels) or 0.0


# -- jitgate_proxy_bytes_total --------------------------------------------------------------


@dataclass(eq=False)
class Tally:
    bytes_from_client: int = 0
    bytes_from_upstream: int = 0


def test_relayed_bytes_count_live_and_ended_sessions_once() -> None:
    registry = prometheus_client.CollectorRegistry()
    counted = metrics.RelayedBytes(registry)

    def now() -> tuple[float, float]:
        return (
            sample("jitgate_proxy_bytes_total", registry, direction="client_to_server"),
            sample("jitgate_proxy_bytes_total", registry, direction="server_to_client"),
        )

    # Exposed from the start (a panel shows 0, not "no data").
    assert registry.get_sample_value("jitgate_proxy_bytes_total", {"direction": "client_to_server"}) == 0
    one, two = Tally(), Tally()
    counted.track(one)
    counted.track(two)
    one.bytes_from_client += 100
    two.bytes_from_upstream += 7
    assert now() == (100, 7)  # live sessions, as they go
    one.bytes_from_upstream += 5
    counted.untrack(one)
    counted.untrack(one)  # twice: counted once
    one.bytes_from_client += 1_000  # a tally no longer tracked moves nothing
    assert now() == (100, 12)
    counted.untrack(two)
    assert now() == (100, 12)
    untracked = Tally(bytes_from_client=50)
    counted.untrack(untracked)  # never tracked: nothing
    assert now() == (100, 12)


# -- jitgate_statements_total, jitgate_masked_values_total, jitgate_statement_seconds ---------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["allow", "block", "review", "masked"]),
    st.integers(min_value=0, max_value=1_000),
    st.one_of(
        st.none(),
        # Exactly on each bound (a bound's own bucket: "le"), just around them, and anywhere.
        st.sampled_from([b * 1000 for b in metrics.StatementTally.BOUNDS]),
        st.floats(min_value=0, max_value=60_000, allow_nan=False),
    ),
), max_size=60))
def test_statement_tally_exposes_what_prometheus_clients_metrics_would(
    statements: list[tuple[str, int, float | None]],
) -> None:
    """The plain-int tally the recorder counts in, scraped, reads as prometheus_client's own
    Counter and Histogram fed the same statements would: same names, labels, buckets (a
    duration on a bound counts in that bound's bucket), sums and counts."""
    tallied, reference = prometheus_client.CollectorRegistry(), prometheus_client.CollectorRegistry()
    tally = metrics.StatementTally(tallied)
    decided = prometheus_client.Counter("jitgate_statements", "x", ["decision"], registry=reference)
    masked = prometheus_client.Counter("jitgate_masked_values", "x", registry=reference)
    seconds = prometheus_client.Histogram(
        "jitgate_statement_seconds", "x", buckets=metrics.StatementTally.BOUNDS, registry=reference
    )
    for decision, values, duration_ms in statements:
        tally.count(decision, values, duration_ms)
        decided.labels(decision).inc()
        masked.inc(values)
        if duration_ms is not None:
            seconds.observe(duration_ms / 1000)

    def samples(registry: prometheus_client.CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in registry.collect() for s in family.samples if not s.name.endswith("_created")
        }

    ours, theirs = samples(tallied), samples(reference)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value), key


def test_collectors_over_plain_ints_declare_the_series_they_expose() -> None:
    """`SERIES` (what tests/infra checks the Grafana dashboard's queries against) is what
    each collector's scrape carries: names and label names."""
    registry = prometheus_client.CollectorRegistry()
    tally = metrics.StatementTally(registry)
    tally.count("allow", 1, 0.5)
    for collector in (metrics.RelayedBytes(registry), tally, metrics.FastPathTally(registry)):
        exposed: dict[str, set[str]] = {}
        for family in collector.collect():
            for s in family.samples:
                exposed.setdefault(s.name, set()).update(s.labels)
        assert exposed == collector.SERIES


# -- the recorder: jitgate_recorder_pending, jitgate_recorder_dropped_total -------------------

GRANT = Grant(
    token_id=None, principal="agent:metrics", groups=("ai-agents",), resource="demo", role="readwrite",
    expires_at=datetime(2031, 1, 1, tzinfo=UTC), reusable=True,
)


class FlakyStore:
    """The real sessions repository behind a switch that makes `record_statements` fail like an
    outage."""

    def __init__(self, sessions: SessionRepository) -> None:
        self.sessions = sessions
        self.down = False

    async def record_statements(self, records: Sequence[StatementRecord]) -> None:
        if self.down:
            raise StoreUnavailable("record statements: store unavailable (ConnectionRefused)")
        await self.sessions.record_statements(records)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sessions, name)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(f"sqlite+aiosqlite:///{tmp_path}/metrics.db")
    yield s
    await s.close()


def rec(session_id: str, seq: int) -> StatementRecord:
    return StatementRecord(
        session_id=session_id, seq=seq, sql=f"select {seq}", decision="allow", started_at=datetime.now(UTC)
    )


async def test_recorder_pending_is_the_backlog_during_an_outage(store: Store) -> None:
    flaky = FlakyStore(store.sessions)
    recorder = Recorder(flaky, flush_interval=0.01, batch_size=5, high_water=100, max_backoff=0.02)  # type: ignore[arg-type]
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    assert sample("jitgate_recorder_pending") == 0
    flaky.down = True
    for seq in range(1, 13):
        recorder.record_statement(rec(sid, seq))
    await asyncio.sleep(0.1)  # the writer tried and failed meanwhile
    # What an operator watching an outage must see: the records waiting, not the last
    # value a successful write happened to leave.
    assert sample("jitgate_recorder_pending") == 12
    flaky.down = False
    await asyncio.wait_for(recorder.flush(), 5)
    assert sample("jitgate_recorder_pending") == 0
    await recorder.aclose()


async def test_recorder_drops_are_counted_by_cause(store: Store) -> None:
    def dropped(cause: str) -> float:
        return sample("jitgate_recorder_dropped_total", cause=cause)

    before = {cause: dropped(cause) for cause in ("invalid", "overflow", "shutdown")}
    # invalid: the store refuses a record (its session does not exist); the good ones are kept.
    recorder = Recorder(store.sessions, flush_interval=0.01, batch_size=10, high_water=100, writer_process=False)
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    recorder.record_statement(rec(sid, 1))
    recorder.record_statement(rec("no-such-session", 1))
    await asyncio.wait_for(recorder.flush(), 5)
    assert dropped("invalid") == before["invalid"] + 1
    assert (dropped("overflow"), dropped("shutdown")) == (before["overflow"], before["shutdown"])
    await recorder.aclose()

    # overflow: past the hard limit while the store is down; shutdown: still unwritten at close.
    flaky = FlakyStore(store.sessions)
    recorder = Recorder(
        flaky, flush_interval=0.01, batch_size=2, high_water=4, hard_limit=6, max_backoff=0.02,  # type: ignore[arg-type]
        close_timeout=0.2, writer_process=False,
    )
    recorder.start()
    sid = await recorder.start_session(SessionStart(GRANT))
    flaky.down = True
    for seq in range(1, 10):
        recorder.record_statement(rec(sid, seq))
    assert dropped("overflow") == before["overflow"] + 3
    assert dropped("shutdown") == before["shutdown"]
    await recorder.aclose()
    assert dropped("shutdown") == before["shutdown"] + 6
    assert dropped("invalid") == before["invalid"] + 1


# -- jitgate_audit_forward_total --------------------------------------------------------------


class Sink:
    """A transport that fails while `down`, and records what it was given otherwise."""

    def __init__(self) -> None:
        self.down = False
        self.got: list[int] = []

    async def send(self, records: Sequence[AuditRecord]) -> None:
        if self.down:
            raise ConnectionRefusedError("sink down")
        self.got.extend(r.seq for r in records)

    async def aclose(self) -> None:
        pass


def audit_record(seq: int) -> AuditRecord:
    return AuditRecord(seq, f"id-{seq}", datetime(2030, 1, 1, tzinfo=UTC), "login", "person:a", None, {}, "0" * 64,
                       "1" * 64)


async def test_audit_forwarding_counts_sent_failed_and_dropped() -> None:
    def forwarded(outcome: str) -> float:
        return sample("jitgate_audit_forward_total", outcome=outcome)

    before = {o: forwarded(o) for o in ("sent", "failed", "dropped")}
    sink = Sink()
    forwarder = AuditForwarder(sink, batch_size=10, flush_interval=0.01, max_queue=5, max_backoff=0.02)
    forwarder.start()
    forwarder.submit([audit_record(i) for i in range(3)])
    await forwarder.flush()
    assert sink.got == [0, 1, 2]
    assert forwarded("sent") == before["sent"] + 3
    assert (forwarded("failed"), forwarded("dropped")) == (before["failed"], before["dropped"])

    sink.down = True
    forwarder.submit([audit_record(i) for i in range(3, 10)])  # 7 into a queue of 5: 2 dropped
    assert forwarded("dropped") == before["dropped"] + 2
    await asyncio.sleep(0.05)
    assert forwarded("failed") >= before["failed"] + 5  # each failed attempt, per record
    sink.down = False
    await forwarder.flush()
    assert forwarded("sent") == before["sent"] + 8
    await forwarder.aclose()


# -- jitgate_slack_errors_total ---------------------------------------------------------------


class Retry(Exception):
    pass


class FakeTask:
    """What `_retry` reads of a bound Celery task (the seam between Celery and jitgate)."""

    name = "jitgate.test"

    class request:  # noqa: N801 - Celery's attribute
        retries = 0

    def retry(self, **_kw: object) -> Retry:
        return Retry()


def test_slack_errors_count_failed_deliveries_by_method() -> None:
    from slackapp.exceptions import SlackDeliveryError
    from workers.tasks import _retry

    before = sample("jitgate_slack_errors_total", method="chat.update")
    with pytest.raises(Retry):
        _retry(FakeTask(), SlackDeliveryError("chat.update", "HTTP 503"))
    assert sample("jitgate_slack_errors_total", method="chat.update") == before + 1
    # A failure that is not Slack's (the store, say) is retried without counting as one.
    with pytest.raises(Retry):
        _retry(FakeTask(), StoreUnavailable("store unavailable"))
    assert sample("jitgate_slack_errors_total", method="chat.update") == before + 1
