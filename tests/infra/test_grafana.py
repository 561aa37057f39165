"""infra/grafana/jitgate-dashboard.json: well-formed, and every metric a panel queries is one
jitgate registers (a renamed metric must not leave a silently empty panel)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from broker import metrics
from tests.infra.conftest import INFRA

DASHBOARD = INFRA / "grafana" / "jitgate-dashboard.json"
METRIC = re.compile(r"\b(jitgate_[a-z0-9_]+)")
# Modules that register metrics in broker.metrics.REGISTRY beside broker/metrics.py itself.
REGISTERING_MODULES = ("broker.audit.forward", "broker.audit.witness")


def exposed_series() -> set[str]:
    """Every series name the registry can expose, with counter and histogram suffixes."""
    import importlib

    for module in REGISTERING_MODULES:
        importlib.import_module(module)
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created", ""),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_dashboard_is_well_formed(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table", "row"}
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_every_queried_metric_exists(dashboard: dict[str, Any]) -> None:
    exposed = exposed_series()
    missing = [
        (title, name) for title, expr in expressions(dashboard) for name in METRIC.findall(expr) if name not in exposed
    ]
    assert not missing, f"panels query metrics jitgate does not register: {missing}"


def test_the_dashboard_covers_the_core_metrics(dashboard: dict[str, Any]) -> None:
    queried = {name for _, expr in expressions(dashboard) for name in METRIC.findall(expr)}
    for core in ("jitgate_sessions_active", "jitgate_statements_total", "jitgate_statement_seconds_bucket",
                 "jitgate_masked_values_total", "jitgate_auth_failures_total", "jitgate_recorder_pending",
                 "jitgate_audit_witness_total"):
        assert core in queried


def test_counters_are_only_queried_through_rate(dashboard: dict[str, Any]) -> None:
    # A raw counter plots a meaningless ever-growing line, and resets on every restart.
    for title, expr in expressions(dashboard):
        for name in METRIC.findall(expr):
            if name.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(rf"(rate|increase)\({name}\b", expr), (title, expr)


def series_labels() -> dict[str, set[str]]:
    """Every series name jitgate exposes -> the label names its samples carry."""
    import importlib

    from prometheus_client.metrics import MetricWrapperBase

    labels: dict[str, set[str]] = {}
    for module_name in ("broker.metrics", *REGISTERING_MODULES):
        module = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                names, kind = set(value._labelnames), value._type
                base = value._name
            elif isinstance(value, (metrics.RelayedBytes, metrics.StatementTally, metrics.FastPathTally)):
                labels.update(value.SERIES)  # collectors over plain ints declare their series
                continue
            else:
                continue
            if kind == "counter":
                labels[base + "_total"] = names
            elif kind == "histogram":
                labels.update({base + "_bucket": names | {"le"}, base + "_sum": names, base + "_count": names})
            else:
                labels[base] = names
    return labels


#: The values a dashboard may match a label against: what the code can put there.
LABEL_VALUES: dict[str, set[str]] = {
    "decision": {"allow", "review", "block"},
    "direction": {"client_to_server", "server_to_client"},
}
BY = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"(jitgate_[a-z0-9_]+)\{([^}]*)\}")


def test_every_label_a_panel_groups_or_filters_by_exists(dashboard: dict[str, Any]) -> None:
    from broker.policy.model import Decision

    assert {d.value for d in Decision} == LABEL_VALUES["decision"]
    known = series_labels()
    wrong = []
    for title, expr in expressions(dashboard):
        names = METRIC.findall(expr)
        for group in BY.findall(expr):
            for label in filter(None, (g.strip() for g in group.split(","))):
                wrong += [(title, name, label) for name in names if label not in known[name]]
        for name, body in MATCHER.findall(expr):
            for matcher in filter(None, (m.strip() for m in body.split(","))):
                label, _, value = re.split(r"(=~|!=|!~|=)", matcher, maxsplit=1)
                if label not in known[name]:
                    wrong.append((title, name, label))
                elif value.strip('"') not in LABEL_VALUES.get(label, set()):
                    wrong.append((title, name, matcher))
    assert not wrong, f"panels group or filter by labels or values jitgate never sets: {wrong}"


def test_the_label_check_catches_a_typo() -> None:
    bad = {"panels": [{"title": "x", "targets": [
        {"expr": 'sum by (decisions) (rate(jitgate_statements_total{decision="blocked"}[5m]))'}]}]}
    with pytest.raises(AssertionError, match="decisions"):
        test_every_label_a_panel_groups_or_filters_by_exists(bad)
