from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from broker.config import Settings, hash_api_token, is_loopback, load_settings
from broker.exceptions import ConfigError

DIGEST = hash_api_token("jga_admin")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("JITGATE_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "jitgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


FULL = """
    data_dir: state
    store_url: postgresql://jitgate:db-pw@db.internal/jitgate
    log_level: DEBUG
    log_json: true
    proxy:
      listen_host: 0.0.0.0
      listen_port: 7432
      tls_cert_file: tls/cert.pem
      tls_key_file: /etc/jitgate/key.pem
      review_wait_seconds: 30
    api:
      port: 9090
      tokens: [{digest}]
    resources:
      demo:
        upstream:
          host: 127.0.0.1
          port: 5432
          dbname: demo
          sslmode: verify-full
          sslrootcert: ca.pem
          username: app
          password: upstream-pw
        policy: policies/strict.yaml
        masking: {{columns: [email], deterministic: true}}
        record_results: true
      billing:
        upstream: {{host: pg.billing, dbname: billing, username: ro}}
        policy: read-only
"""


def test_full_file_loads(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL.format(digest=DIGEST)))

    assert settings.data_dir == tmp_path / "state"
    assert (
        settings.store_url.get_secret_value()
        == "postgresql+asyncpg://jitgate:db-pw@db.internal/jitgate"
    )
    assert (settings.log_level, settings.log_json) == ("debug", True)
    proxy = settings.proxy
    assert (proxy.listen_host, proxy.listen_port, proxy.review_wait_seconds) == (
        "0.0.0.0",
        7432,
        30,
    )
    assert proxy.tls_cert_file == tmp_path / "tls/cert.pem"  # relative to the file
    assert proxy.tls_key_file == Path("/etc/jitgate/key.pem")
    assert proxy.max_message_bytes == 64 * 1024 * 1024
    assert (settings.api.port, settings.api.tokens) == (9090, [DIGEST])

    demo = settings.resources["demo"]
    assert demo.upstream.sslmode == "verify-full"
    assert demo.upstream.sslrootcert == tmp_path / "ca.pem"
    assert demo.upstream.username.get_secret_value() == "app"
    assert demo.upstream.password is not None
    assert demo.upstream.password.get_secret_value() == "upstream-pw"
    assert demo.policy == str(tmp_path / "policies/strict.yaml")
    assert demo.masking == {"columns": ["email"], "deterministic": True}
    assert demo.record_results is True

    billing = settings.resources["billing"]
    assert billing.policy == "read-only"  # a preset name is not a path
    assert (billing.upstream.port, billing.upstream.sslmode) == (5432, "prefer")
    assert billing.upstream.password is None


def test_defaults_without_a_file() -> None:
    settings = load_settings()
    assert settings.data_dir == Path(".jitgate")
    assert settings.store_url.get_secret_value() == "sqlite+aiosqlite:///.jitgate/jitgate.db"
    assert (settings.proxy.listen_host, settings.proxy.listen_port) == ("127.0.0.1", 6432)
    assert settings.proxy.review_wait_seconds == 120
    assert settings.proxy.require_tls_for_non_loopback is True
    assert (settings.api.host, settings.api.port, settings.api.tokens) == ("127.0.0.1", 8080, [])
    assert settings.resources == {}


def test_default_store_follows_data_dir(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, f"data_dir: {tmp_path}/var"))
    assert settings.store_url.get_secret_value() == f"sqlite+aiosqlite:///{tmp_path}/var/jitgate.db"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, FULL.format(digest=DIGEST))
    monkeypatch.setenv("JITGATE_CONFIG", str(path))
    monkeypatch.setenv("JITGATE_PROXY__LISTEN_PORT", "8432")
    monkeypatch.setenv("JITGATE_RESOURCES__DEMO__UPSTREAM__PASSWORD", "from-env")
    monkeypatch.setenv("JITGATE_LOG_JSON", "false")
    monkeypatch.setenv("JITGATE_PROXY__IDLE_TIMEOUT_SECONDS", "600")

    settings = load_settings()  # path from JITGATE_CONFIG

    assert settings.proxy.listen_port == 8432
    assert settings.proxy.review_wait_seconds == 30  # the rest of the section is kept
    assert settings.proxy.idle_timeout_seconds == 600
    assert settings.log_json is False
    demo = settings.resources["demo"]
    assert demo.upstream.password is not None
    assert demo.upstream.password.get_secret_value() == "from-env"
    assert demo.upstream.username.get_secret_value() == "app"  # merged, not replaced


def test_a_resource_can_come_from_the_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_RESOURCES__DEMO__UPSTREAM__HOST", "db")
    monkeypatch.setenv("JITGATE_RESOURCES__DEMO__UPSTREAM__DBNAME", "demo")
    monkeypatch.setenv("JITGATE_RESOURCES__DEMO__UPSTREAM__USERNAME", "app")
    settings = load_settings()
    assert settings.resources["demo"].upstream.host == "db"


def test_errors_name_the_file_and_every_key_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        proxy:
          listen_port: 70000
          listn_host: 0.0.0.0
        api:
          tokens: [not-a-digest]
        resources:
          demo:
            upstream: {host: h, port: 65536, dbname: d, username: u, sslmode: sometimes}
          "bad name":
            upstream: {host: h, dbname: d, username: u}
          nocreds:
            upstream: {host: h, dbname: d}
        log_level: loud
        """,
    )
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    lines = message.splitlines()
    assert lines[0] == f"{path}: 8 configuration errors"
    assert err.value.source == str(path)
    assert "  resources.demo.upstream.port: Input should be less than 65536" in lines
    paths = [p for p, _ in err.value.errors]
    assert paths == [
        "proxy.listen_port",
        "proxy.listn_host",
        "api.tokens[0]",
        "resources.demo.upstream.port",
        "resources.demo.upstream.sslmode",
        "resources.bad name",
        "resources.nocreds",  # upstream.username: required only with static credentials
        "log_level",
    ]
    reasons = dict(err.value.errors)
    assert reasons["proxy.listn_host"] == "Extra inputs are not permitted"
    assert "SHA-256" in reasons["api.tokens[0]"]
    assert "invalid resource name" in reasons["resources.bad name"]
    assert "upstream.username is required" in reasons["resources.nocreds"]


def test_environment_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JITGATE_PROXY__LISTEN_PORT", "many")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.errors == [
        (
            "proxy.listen_port",
            "Input should be a valid integer, unable to parse string as an integer",
        )
    ]
    assert str(err.value).startswith("environment: 1 configuration error\n")


def test_non_loopback_listener_needs_tls(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "proxy: {listen_host: 0.0.0.0}"))
    ((path, reason),) = err.value.errors
    assert path == "proxy.tls_cert_file"
    assert "0.0.0.0" in reason and "loopback" in reason

    relaxed = "proxy: {listen_host: 0.0.0.0, require_tls_for_non_loopback: false}"
    assert load_settings(write(tmp_path, relaxed)).proxy.tls_cert_file is None
    assert load_settings(write(tmp_path, "proxy: {listen_host: localhost}")).proxy


def test_tls_files_come_in_pairs(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "proxy: {tls_cert_file: c.pem}"))
    assert err.value.errors == [
        ("proxy.tls_cert_file", "tls_cert_file and tls_key_file must be given together")
    ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("mysql://x@y/z", "unsupported scheme 'mysql'"),
        ("not a url", "not a URL"),
    ],
)
def test_store_url_must_be_sqlite_or_postgresql(
    monkeypatch: pytest.MonkeyPatch, url: str, reason: str
) -> None:
    monkeypatch.setenv("JITGATE_STORE_URL", url)
    with pytest.raises(ConfigError) as err:
        load_settings()
    ((path, message),) = err.value.errors
    assert path == "store_url" and reason in message
    assert "x@y" not in str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("proxy: [1, 2", "invalid YAML at line 1"),
        ("- a\n- b\n", "the top level must be a mapping, not list"),
    ],
)
def test_unreadable_files_are_config_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as err:
        load_settings(path)
    assert str(err.value).startswith(str(path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).proxy.listen_port == 6432


def test_secrets_never_show_in_repr_or_dumps(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, FULL.format(digest=DIGEST)))
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "upstream-pw" not in text
        assert "db-pw" not in text
        assert "**********" in text


def test_settings_can_be_built_in_code() -> None:
    settings = Settings(proxy={"listen_port": 0})  # type: ignore[arg-type]
    assert settings.proxy.listen_port == 0


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("db.example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
