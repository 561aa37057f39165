"""Every jitgate process that serves metrics is scraped, on the port its configuration sets:
in the compose stack by infra/prometheus/prometheus.yml (api: api.port; proxy: one target per
worker, proxy.metrics_port + i; the Celery worker: worker.metrics_port), in Kubernetes by the
pods' prometheus.io annotations; and Grafana is provisioned with that Prometheus and the
dashboard."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

from broker.config import Settings, load_settings
from tests.infra.conftest import INFRA, load_all_yaml, load_yaml

COMPOSE = INFRA / "docker-compose.yml"
K8S = INFRA / "k8s"


def workers(command: list[str]) -> int:
    """The process count of a `jitgate proxy` command line (`--workers N`, default 1)."""
    for i, arg in enumerate(command):
        if arg == "--workers":
            return int(command[i + 1])
        if arg.startswith("--workers="):
            return int(arg.split("=", 1)[1])
    return 1


def metrics_targets(settings: Settings, proxy_command: list[str]) -> dict[str, set[int]]:
    """Each metrics-serving component and the ports its processes serve metrics on."""
    targets = {"api": {settings.api.port}}
    port = settings.proxy.metrics_port
    assert port, "proxy.metrics_port is not set: the proxy's metrics are not served at all"
    # A loopback listener is unreachable from Prometheus in another container or pod.
    assert not ipaddress.ip_address(settings.proxy.metrics_host).is_loopback, "proxy.metrics_host is loopback"
    targets["proxy"] = {port + i for i in range(workers(proxy_command))}
    # The Celery worker: one endpoint whatever its concurrency (the pool's sum, workers.metrics).
    assert settings.worker.metrics_port, "worker.metrics_port is not set: what the worker counts is not served"
    assert not ipaddress.ip_address(settings.worker.metrics_host).is_loopback, "worker.metrics_host is loopback"
    targets["worker"] = {settings.worker.metrics_port}
    return targets


# -- compose ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def compose_settings() -> Settings:
    env = {k: v for k, v in dotenv_values(INFRA / "jitgate.env").items() if v is not None}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        return load_settings(INFRA / "jitgate.yaml")


def mounted(service: dict[str, Any], target: str) -> Path:
    for volume in service.get("volumes", []):
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            return INFRA / source
    raise AssertionError(f"nothing is mounted at {target}")


def scraped(prometheus_yml: dict[str, Any]) -> dict[str, set[str]]:
    """job -> its static targets, with the metrics path checked on the way."""
    jobs: dict[str, set[str]] = {}
    for job in prometheus_yml["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        jobs[job["job_name"]] = {t for sc in job.get("static_configs", []) for t in sc["targets"]}
    return jobs


def test_compose_prometheus_scrapes_every_process_that_serves_metrics(
    compose: dict[str, Any], compose_settings: Settings
) -> None:
    services = compose["services"]
    prometheus = services["prometheus"]
    config_file = mounted(prometheus, "/etc/prometheus/prometheus.yml")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    targets = {t for ts in scraped(load_yaml(config_file)).values() for t in ts}
    expected = {
        f"{service}:{port}"
        for service, ports in metrics_targets(compose_settings, services["proxy"]["command"]).items()
        for port in ports
    }
    assert expected <= targets, f"not scraped: {sorted(expected - targets)}"
    # Nothing else: a target that names no service, or a port nothing serves, is a dead scrape.
    assert targets <= expected, f"scraped but not served: {sorted(targets - expected)}"
    # The proxy's metrics ports are reachable on the compose network, and not published.
    proxy = services["proxy"]
    assert {str(p) for p in metrics_targets(compose_settings, proxy["command"])["proxy"]} <= set(
        map(str, proxy.get("expose", [])))
    assert not any(str(p).split(":")[-1] in {"9432", "9433"} for p in proxy.get("ports", []))
    worker = services["worker"]
    assert {str(p) for p in metrics_targets(compose_settings, proxy["command"])["worker"]} <= set(
        map(str, worker.get("expose", [])))
    assert not worker.get("ports"), "the worker's metrics are for prometheus on the compose network only"


def test_the_scrape_check_catches_a_missed_worker(compose_settings: Settings) -> None:
    # Four workers serve four ports; the two targets in prometheus.yml would not cover them.
    ports = metrics_targets(compose_settings, ["proxy", "--workers", "4"])["proxy"]
    assert len(ports) == 4
    jobs = scraped(load_yaml(INFRA / "prometheus" / "prometheus.yml"))
    targets = {int(t.split(":")[1]) for t in jobs["jitgate-proxy"]}
    assert not ports <= targets


def test_compose_grafana_shows_the_dashboard_from_that_prometheus(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    provisioning = mounted(grafana, "/etc/grafana/provisioning")
    dashboard = mounted(grafana, "/var/lib/grafana/dashboards/jitgate-dashboard.json")
    assert dashboard == INFRA / "./grafana/jitgate-dashboard.json" and dashboard.is_file()
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yaml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"] == "http://prometheus:9090"
    assert "9090:9090" in compose["services"]["prometheus"]["ports"][0]
    (provider,) = load_yaml(provisioning / "dashboards" / "jitgate.yaml")["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    # UIs on loopback only: the dev stack's admin password is no secret.
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in compose["services"][name]["ports"]), name


# -- Kubernetes -------------------------------------------------------------------------------


def deployments() -> dict[str, dict[str, Any]]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in load_all_yaml(p)]
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


@pytest.fixture(scope="module")
def k8s_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    configmap = next(d for d in load_all_yaml(K8S / "configmap.yaml") if d["kind"] == "ConfigMap")
    secret = next(d for d in load_all_yaml(K8S / "secret.example.yaml") if d["kind"] == "Secret")
    config = tmp_path_factory.mktemp("k8s") / "jitgate.yaml"
    config.write_text(configmap["data"]["jitgate.yaml"], encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in secret["stringData"].items():
            patch.setenv(key, value)
        return load_settings(config)


def test_k8s_pods_that_serve_metrics_are_annotated_with_the_configured_port(k8s_settings: Settings) -> None:
    by_name = deployments()
    annotated = {}
    for name, deployment in by_name.items():
        template = deployment["spec"]["template"]
        annotations = template["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            (container,) = template["spec"]["containers"]
            annotated[name.removeprefix("jitgate-")] = (annotations, container)
    (proxy,) = by_name["jitgate-proxy"]["spec"]["template"]["spec"]["containers"]
    wanted = metrics_targets(k8s_settings, proxy["args"])
    assert set(annotated) == set(wanted), "every pod that serves metrics is scraped, and only those"
    for component, ports in wanted.items():
        annotations, container = annotated[component]
        # One annotation names one port: a pod must serve its metrics on exactly one.
        assert len(ports) == 1, f"{component}: {len(ports)} metrics endpoints per pod, one annotation"
        (port,) = ports
        assert annotations["prometheus.io/port"] == str(port), component
        assert annotations.get("prometheus.io/path", "/metrics") == "/metrics", component
        assert port in {p["containerPort"] for p in container["ports"]}, component


def test_the_k8s_check_catches_a_second_proxy_worker(k8s_settings: Settings) -> None:
    ports = metrics_targets(k8s_settings, ["proxy", "--workers", "2"])["proxy"]
    assert len(ports) == 2  # what the annotation check above refuses
