"""infra/k8s: every manifest against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields are errors), plus what the schemas cannot know: the probes hit real
routes, the ConfigMap's config loads with the real Settings, and kustomize names real files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from broker.api import create_app
from broker.config import Settings, load_settings
from tests.infra.conftest import INFRA, load_all_yaml, load_yaml

K8S = INFRA / "k8s"
KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{d['kind']}/{d['metadata']['name']}", d) for p in MANIFESTS for d in load_all_yaml(p)]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


@pytest.mark.parametrize("doc", [d for _, d in documents()], ids=[name for name, _ in documents()])
def test_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_strict_validation_catches_a_typo() -> None:
    deployment = by_kind("Deployment")["jitgate-api"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_existing_files_and_no_secret() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    # The Secret is created out of band; an example must never be applied by accident.
    assert "secret.example.yaml" not in kustomization["resources"]
    assert {"api.yaml", "proxy.yaml", "worker.yaml", "configmap.yaml"} <= set(kustomization["resources"])


def test_deployments_run_the_right_command_hardened() -> None:
    deployments = by_kind("Deployment")
    assert set(deployments) == {"jitgate-api", "jitgate-proxy", "jitgate-worker"}
    for name, deployment in deployments.items():
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        (container,) = pod["containers"]
        assert container["args"][0] == name.removeprefix("jitgate-")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"secretRef": {"name": "jitgate-secrets"}} in container["envFrom"]
        mounted = {m["name"] for m in container["volumeMounts"]}
        assert mounted <= {v["name"] for v in pod["volumes"]}, name
        assert "config" in mounted


def test_api_probes_use_the_health_routes(tmp_path: Path) -> None:
    container = by_kind("Deployment")["jitgate-api"]["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    port_names = {p["name"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in port_names
    app = create_app(Settings(data_dir=tmp_path), store=None)  # type: ignore[arg-type]  # routes only
    assert {"/healthz", "/readyz", "/metrics"} <= set(app.openapi()["paths"])


def test_services_target_named_container_ports() -> None:
    deployments = by_kind("Deployment")
    for name, service in by_kind("Service").items():
        pod = deployments[name]["spec"]["template"]["spec"]
        ports = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (name, port)


def test_configmap_config_loads_with_the_secret_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = next(d for _, d in documents() if d["kind"] == "Secret" and d["metadata"]["name"] == "jitgate-secrets")
    for key, value in secret["stringData"].items():
        monkeypatch.setenv(key, value)
    config = tmp_path / "jitgate.yaml"
    config.write_text(by_kind("ConfigMap")["jitgate-config"]["data"]["jitgate.yaml"], encoding="utf-8")
    settings = load_settings(config)
    assert settings.proxy.tls_cert_file == Path("/etc/jitgate/tls/tls.crt")
    assert settings.vault is not None and settings.vault.auth.method == "jwt"
    assert settings.vault.auth.jwt_file == Path("/var/run/secrets/jitgate/vault-token")
    # The paths the config names are where the pods mount them.
    proxy = by_kind("Deployment")["jitgate-proxy"]["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in proxy["volumeMounts"]}
    assert {"/etc/jitgate/tls", "/var/run/secrets/jitgate", "/etc/jitgate/jitgate.yaml"} <= mounts
