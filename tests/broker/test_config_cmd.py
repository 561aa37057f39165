"""`jitgate config check` on real files: every error with its key path and a fix hint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from broker.cli import config_cmd

GOOD: dict[str, Any] = {
    "proxy": {"listen_port": 7432},
    "resources": {
        "demo": {"upstream": {"host": "127.0.0.1", "dbname": "demo", "username": "app", "password": "pw-never-shown"}}
    },
}


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """A root with a callback, so that `config` stays a group as in `jitgate`."""

    config_cmd.register(app)
    return app


@pytest.fixture(autouse=True)
def _no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.upper().startswith("JITGATE_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, data: Any, name: str = "jitgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def check(cli: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["config", "check", *args])
    return result.exit_code, result.output


def check_json(cli: typer.Typer, path: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code, out = check(cli, "--config", str(path), "--json", *args)
    return code, json.loads(out)


def by_path(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["path"]: e for e in report["errors"]}


def test_a_good_config_passes_with_a_summary(cli: typer.Typer, tmp_path: Path) -> None:
    code, out = check(cli, "--config", str(write(tmp_path, GOOD)))
    assert code == 0, out
    assert "OK" in out and "demo" in out and "127.0.0.1:5432/demo" in out and "agent-safe" in out
    assert "pw-never-shown" not in out


def test_every_error_is_reported_with_its_path_and_a_hint(cli: typer.Typer, tmp_path: Path) -> None:
    bad = {
        "proxy": {"listen_port": "sixty-four", "listne_host": "0.0.0.0"},
        "api": {"tokens": ["not-a-digest"]},
        "resources": {
            "demo": {"upstream": {"host": "db", "port": 0, "dbname": "demo", "username": "app"}},
            "noupstream": {"policy": "agent-safe"},
        },
        "log_level": "loud",
    }
    code, report = check_json(cli, write(tmp_path, bad))
    assert code == 1 and report["ok"] is False
    errors = by_path(report)
    assert errors["proxy.listen_port"]["hint"] == "use a whole number"
    assert errors["proxy.listne_host"]["hint"] == "unknown key: did you mean `listen_host`?"
    assert "jitgate token new-api" in errors["api.tokens[0]"]["hint"]
    assert errors["resources.demo.upstream.port"]["hint"] == "use a value greater than 0"
    assert errors["resources.noupstream.upstream"]["hint"] == "add `upstream`: it is required"
    assert "'debug'" in errors["log_level"]["hint"]


def test_text_output_names_path_message_and_fix(cli: typer.Typer, tmp_path: Path) -> None:
    bad = {**GOOD, "resources": {"demo": {**GOOD["resources"]["demo"], "credentials": {"provider": "vaul"}}}}
    code, out = check(cli, "--config", str(write(tmp_path, bad)))
    assert code == 1
    assert "1 error" in out
    assert "resources.demo.credentials.provider: Input should be 'static', 'vault' or 'local'" in out
    assert "fix: use one of 'static', 'vault' or 'local'" in out


def test_unknown_top_level_key_lists_the_allowed_ones(cli: typer.Typer, tmp_path: Path) -> None:
    code, report = check_json(cli, write(tmp_path, {**GOOD, "zzz": 1}))
    assert code == 1
    hint = by_path(report)["zzz"]["hint"]
    assert hint.startswith("unknown key: remove it; allowed here:") and "resources" in hint


def test_nested_unknown_key_in_a_union_section(cli: typer.Typer, tmp_path: Path) -> None:
    bad = {**GOOD, "audit": {"sink": {"kind": "webhook", "url": "https://siem.example", "batchsize": 5}}}
    code, report = check_json(cli, write(tmp_path, bad))
    assert code == 1
    assert by_path(report)["audit.sink.webhook.batchsize"]["hint"] == "unknown key: did you mean `batch_size`?"


def test_vault_and_tls_rules_get_specific_hints(cli: typer.Typer, tmp_path: Path) -> None:
    bad = {
        "proxy": {"listen_host": "0.0.0.0"},
        "resources": {"app": {"upstream": {"host": "db", "dbname": "app"}, "credentials": {"provider": "vault"}}},
    }
    code, report = check_json(cli, write(tmp_path, bad))
    assert code == 1
    errors = by_path(report)
    assert "tls_cert_file" in errors["proxy.tls_cert_file"]["hint"]
    assert "`vault:`" in errors["vault"]["hint"]


def test_secrets_never_reach_the_output(cli: typer.Typer, tmp_path: Path) -> None:
    bad = {"store_url": "mysql://root:hunter2@db/x", **GOOD}
    code, out = check(cli, "--config", str(write(tmp_path, bad)))
    assert code == 1 and "store_url" in out
    assert "hunter2" not in out


def test_missing_files_are_errors(cli: typer.Typer, tmp_path: Path) -> None:
    config = {**GOOD, "proxy": {"tls_cert_file": "tls/cert.pem", "tls_key_file": "tls/key.pem"}}
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("x")
    code, report = check_json(cli, write(tmp_path, config))
    assert code == 1
    (error,) = report["errors"]
    assert error["path"] == "proxy.tls_key_file"
    assert error["message"] == f"no such file: {tmp_path / 'tls' / 'key.pem'}"
    assert "relative paths" in error["hint"]


def test_policy_files_are_parsed(cli: typer.Typer, tmp_path: Path) -> None:
    write(tmp_path, {"rules": [{"id": "r1", "match": {"kinds": ["delete"]}, "decision": "maybe"}]}, "policy.yaml")
    config = {"resources": {"demo": {**GOOD["resources"]["demo"], "policy": "policy.yaml"}}}
    code, report = check_json(cli, write(tmp_path, config))
    assert code == 1
    (error,) = report["errors"]
    assert error["path"].startswith("resources.demo.policy (")
    assert "rules[0].decision" in error["path"]
    assert "allow, review, block" in error["message"]
    assert "jitgate policy check" in error["hint"]


def test_an_unknown_preset_is_an_error(cli: typer.Typer, tmp_path: Path) -> None:
    config = {"resources": {"demo": {**GOOD["resources"]["demo"], "policy": "agent-unsafe"}}}
    code, report = check_json(cli, write(tmp_path, config))
    assert code == 1
    assert "agent-safe" in by_path(report)["resources.demo.policy"]["hint"]


def test_a_good_policy_file_and_masking_pass(cli: typer.Typer, tmp_path: Path) -> None:
    write(tmp_path, {"preset": "read-only"}, "policy.yaml")
    resource = {**GOOD["resources"]["demo"], "policy": "policy.yaml", "masking": {"columns": ["email"]}}
    code, out = check(cli, "--config", str(write(tmp_path, {"resources": {"demo": resource}})))
    assert code == 0, out


def test_bad_masking_is_reported_under_the_resource(cli: typer.Typer, tmp_path: Path) -> None:
    resource = {**GOOD["resources"]["demo"], "masking": {"colums": ["email"]}}
    code, report = check_json(cli, write(tmp_path, {"resources": {"demo": resource}}))
    assert code == 1
    assert any(p.startswith("resources.demo.masking") for p in by_path(report))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("proxy: [unclosed\n", "invalid YAML at line"), ("- a list\n", "top level must be a mapping")],
)
def test_unreadable_yaml_is_one_error(cli: typer.Typer, tmp_path: Path, text: str, expected: str) -> None:
    code, out = check(cli, "--config", str(write(tmp_path, text)))
    assert code == 1
    assert expected in out


def test_a_missing_config_file(cli: typer.Typer, tmp_path: Path) -> None:
    code, out = check(cli, "--config", str(tmp_path / "nope.yaml"))
    assert code == 1 and "cannot read" in out


def test_env_file_supplies_secrets_without_leaking_into_the_process(cli: typer.Typer, tmp_path: Path) -> None:
    import os

    config = {
        "vault": {"address": "http://bao:8200", "auth": {"method": "approle", "role_id": "jitgate"}},
        "resources": {"app": {"upstream": {"host": "db", "dbname": "app"}, "credentials": {"provider": "vault"}}},
    }
    path = write(tmp_path, config)
    code, report = check_json(cli, path)
    assert code == 1
    assert "JITGATE_VAULT__AUTH__SECRET_ID" in by_path(report)["vault.auth"]["hint"]
    env = tmp_path / "jitgate.env"
    env.write_text("JITGATE_VAULT__AUTH__SECRET_ID=s3cret-id\n")
    code, out = check(cli, "--config", str(path), "--env-file", str(env))
    assert code == 0, out
    assert "s3cret-id" not in out
    assert "JITGATE_VAULT__AUTH__SECRET_ID" not in os.environ
    code, out = check(cli, "--config", str(path), "--env-file", str(tmp_path / "missing.env"))
    assert code == 1 and "missing.env" in out


def test_the_shipped_example_config_passes(cli: typer.Typer) -> None:
    infra = Path(__file__).resolve().parents[2] / "infra"
    code, out = check(cli, "--config", str(infra / "jitgate.yaml"), "--env-file", str(infra / "jitgate.env"))
    assert code == 0, out
