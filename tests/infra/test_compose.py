"""infra/docker-compose.yml against the Compose Specification's JSON schema, and against
the files and services it names.

The schema is the one check-jsonschema ships (`vendor/compose-spec.json`, from
compose-spec/compose-spec, Apache-2.0), so it is installed, not copied into this repo.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Any

import jsonschema
import pytest
from dotenv import dotenv_values

from broker.config import load_settings
from tests.infra.conftest import INFRA, load_yaml

COMPOSE = INFRA / "docker-compose.yml"
JITGATE_SERVICES = ("api", "proxy", "worker", "slackapp")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))


def test_compose_file_matches_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_rejects_what_compose_would() -> None:
    # The validator is not vacuous: a typo in a service key and a bad healthcheck fail.
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    bad: dict[str, Any] = {"services": {"api": {"image": "x", "comand": ["api"]}}}
    assert any("comand" in e.message for e in validator.iter_errors(bad))
    bad = {"services": {"api": {"image": "x", "healthcheck": {"interval": 5}}}}
    assert list(validator.iter_errors(bad))


def test_the_stack_has_every_part_with_a_healthcheck(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "openbao", "vault-bootstrap", "api", "proxy", "worker", "slackapp"} <= set(services)
    for name in ("postgres", "redis", "openbao", "api", "proxy", "worker"):
        assert "healthcheck" in services[name], name
    assert "/readyz" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["vault-bootstrap"]["restart"] == "no"


def test_depends_on_names_real_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}, which has no healthcheck"


def test_jitgate_services_run_real_commands_with_the_mounted_config(compose: dict[str, Any]) -> None:
    commands = {"api": "api", "proxy": "proxy", "worker": "worker", "slackapp": "slack"}
    for name in JITGATE_SERVICES:
        service = compose["services"][name]
        assert service["command"][0] == commands[name]
        assert "./jitgate.yaml:/etc/jitgate/jitgate.yaml:ro" in service["volumes"]
        assert service["env_file"] == ["jitgate.env"]
        assert service["cap_drop"] == ["ALL"]


def test_bind_mounts_and_env_files_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name}: {source}"
        for env_file in service.get("env_file", []):
            assert (INFRA / env_file).is_file(), f"{name}: {env_file}"
    assert (INFRA.parent / compose["x-jitgate"]["build"]["dockerfile"]).is_file()


def _default(compose_value: str) -> str:
    """The default of a `${VAR:-default}` interpolation (what runs with no .env)."""
    match = re.fullmatch(r"\$\{[A-Z_]+:-([^}]*)\}", compose_value)
    return match.group(1) if match else compose_value


def test_dev_secrets_agree_between_services(compose: dict[str, Any]) -> None:
    env = dotenv_values(INFRA / "jitgate.env")
    bootstrap = compose["services"]["vault-bootstrap"]["environment"]
    postgres = compose["services"]["postgres"]["environment"]
    assert env["JITGATE_VAULT__AUTH__ROLE_ID"] == _default(bootstrap["APPROLE_ROLE_ID"])
    assert env["JITGATE_VAULT__AUTH__SECRET_ID"] == _default(bootstrap["APPROLE_SECRET_ID"])
    assert f":{_default(postgres['JITGATE_STORE_PASSWORD'])}@postgres:" in (env["JITGATE_STORE_URL"] or "")
    assert bootstrap["PG_ADMIN_PASSWORD"] == postgres["POSTGRES_PASSWORD"]
    assert bootstrap["VAULT_TOKEN"] == compose["services"]["openbao"]["environment"]["BAO_DEV_ROOT_TOKEN_ID"]


def test_example_config_loads_with_the_compose_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in dotenv_values(INFRA / "jitgate.env").items():
        assert value is not None
        monkeypatch.setenv(key, value)
    settings = load_settings(INFRA / "jitgate.yaml")
    assert settings.vault is not None and settings.vault.address == "http://openbao:8200"
    assert settings.vault.auth.secret_id is not None
    assert settings.store_url.get_secret_value().startswith("postgresql+asyncpg://jitgate:")
    assert settings.resources["app"].credentials.provider == "vault"
    assert settings.resources["app"].upstream.host == "postgres"


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """Container path -> (volume or bind source, read-only) of a service's volumes."""
    out = {}
    for spec in service.get("volumes", []):
        source, target, *mode = spec.split(":")
        out[target] = (source, mode == ["ro"])
    return out


def test_the_audit_chain_is_anchored_in_the_stack(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack signs checkpoints into a witness: the key, its public half and the witness
    file the config names are on volumes, made once by audit-keygen, written by the worker
    alone, and present in the image with the jitgate user's ownership (a named volume takes
    the image directory's owner; a missing one would be root's, unwritable)."""
    environment = {**dotenv_values(INFRA / "jitgate.env"), **compose["x-jitgate"]["environment"]}
    for key, value in environment.items():
        monkeypatch.setenv(key, re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value or ""))
    audit = load_settings(INFRA / "jitgate.yaml").audit
    assert audit.signing_key_file is not None and audit.witness.file is not None
    key_dir, pub_dir, witness_dir = (str(p.parent) for p in (audit.signing_key_file, audit.verify_key_files[0],
                                                              audit.witness.file))
    services = compose["services"]
    keygen, worker, api = _mounts(services["audit-keygen"]), _mounts(services["worker"]), _mounts(services["api"])
    assert str(audit.signing_key_file) in " ".join(services["audit-keygen"]["command"])
    assert str(audit.verify_key_files[0]) in " ".join(services["audit-keygen"]["command"])
    assert keygen[key_dir] == (worker[key_dir][0], False) and worker[key_dir][1]  # worker: read only
    assert keygen[pub_dir][0] == api[pub_dir][0] and key_dir not in api  # the API never sees the key
    assert worker[witness_dir] == (api[witness_dir][0], False) and api[witness_dir][1]
    for name in ("api", "proxy", "worker"):
        assert services[name]["depends_on"]["audit-keygen"] == {"condition": "service_completed_successfully"}
    dockerfile = (INFRA.parent / "Dockerfile").read_text()
    for directory in (key_dir, pub_dir, witness_dir):
        assert re.search(rf"install -d -o jitgate -g jitgate -m 07[05][05] [^\n]*{re.escape(directory)}\b", dockerfile)
