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
REGISTERING_MODULES = ("broker.audit.forward",)


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
                 "jitgate_masked_values_total", "jitgate_auth_failures_total", "jitgate_recorder_pending"):
        assert core in queried


def test_counters_are_only_queried_through_rate(dashboard: dict[str, Any]) -> None:
    # A raw counter plots a meaningless ever-growing line, and resets on every restart.
    for title, expr in expressions(dashboard):
        for name in METRIC.findall(expr):
            if name.endswith(("_total", "_bucket", "_sum", "_count")):
                assert re.search(rf"(rate|increase)\({name}\b", expr), (title, expr)
