"""`resources.<name>.credentials` and `vault:`: errors name the key; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.exceptions import ConfigError


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "jitgate.yaml"
    path.write_text(text)
    return load_settings(path)


def _errors(tmp_path: Path, text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, text)
    return dict(err.value.errors)


def test_vault_resource_needs_no_username_and_keeps_secrets_hidden(tmp_path: Path) -> None:
    settings = _load(
        tmp_path,
        """
        vault: {address: "http://vault:8200", auth: {method: approle, role_id: r1, secret_id: s3cr3t-id}}
        resources:
          app:
            upstream: {host: db, dbname: app}
            credentials: {provider: vault, roles: {readwrite: app-rw}}
        """,
    )
    assert "s3cr3t-id" not in repr(settings)
    assert settings.resources["app"].credentials.roles == {"readwrite": "app-rw"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (
            "resources: {app: {upstream: {host: db, dbname: app}, credentials: {provider: vault}}}",
            "vault",
            "resources app use provider 'vault'",
        ),
        (
            "resources: {app: {upstream: {host: db, dbname: app}, credentials: {provider: local, roles: {rw: r}}}}",
            "resources.app.credentials",
            "admin_dsn is required",
        ),
        (
            "resources: {app: {upstream: {host: db, dbname: app}, credentials: {provider: kerberos}}}",
            "resources.app.credentials.provider",
            "static",
        ),
        ("vault: {auth: {method: approle, role_id: r}}", "vault.auth", "secret_id"),
        ("vault: {auth: {method: jwt}}", "vault.auth", "role, jwt or jwt_file"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str, reason: str) -> None:
    errors = _errors(tmp_path, text)
    assert key in errors and reason in errors[key], errors
