"""jitgate configuration: one YAML file plus `JITGATE_*` environment overrides.

Sources, strongest first: keyword arguments to `Settings(...)`, environment variables,
the YAML file, defaults. Environment variables use the prefix `JITGATE_` and `__` for
nesting, e.g. `JITGATE_PROXY__LISTEN_PORT=7432` or
`JITGATE_RESOURCES__DEMO__UPSTREAM__PASSWORD=...`; names are case-insensitive, so a resource
named in the environment is lower-cased. The file comes from `load_settings(path)` or from
`JITGATE_CONFIG`.

Relative file paths written in the YAML file (`data_dir`, `proxy.tls_cert_file`,
`proxy.tls_key_file`, `resources.*.upstream.sslrootcert`, and `resources.*.policy` when it
names a `.yaml`/`.yml` file or contains a `/`) are resolved against the file's directory, as
an operator who keeps a config folder expects; paths from the environment stay relative to
the working directory.

Example::

    data_dir: /var/lib/jitgate
    store_url: postgresql+asyncpg://jitgate@db/jitgate    # default: SQLite in data_dir
    proxy: {listen_host: 0.0.0.0, tls_cert_file: tls/cert.pem, tls_key_file: tls/key.pem}
    api: {port: 8080, tokens: [<sha256 hex of an admin bearer token>]}
    resources:
      demo:
        upstream: {host: 127.0.0.1, port: 5432, dbname: demo, username: app, password: s3cret}
        policy: agent-safe
        masking: {columns: [email]}

`load_settings` turns every validation problem into one `ConfigError` with a line per error,
`<dotted.key.path>: <reason>`. Secrets (`store_url`, upstream credentials) are `SecretStr`:
their repr and JSON dumps show `**********`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from broker.approvals.settings import ApprovalSettings, Installation, SlackSettings
from broker.console.settings import ConsoleSettings
from broker.credentials.settings import CredentialSettings, VaultSettings
from broker.durations import parse_duration
from broker.exceptions import ConfigError
from broker.identity.settings import AccessSettings, OidcSettings
from broker.mcp.settings import McpSettings

__all__ = [
    "ApiSettings",
    "ProxySettings",
    "ResourceSettings",
    "Settings",
    "UpstreamSettings",
    "hash_api_token",
    "load_settings",
]

CONFIG_ENV_VAR = "JITGATE_CONFIG"
MiB = 1024 * 1024

_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def _check_resource_name(name: str) -> str:
    if not _RESOURCE_NAME.match(name):
        raise PydanticCustomError(
            "resource_name", "invalid resource name: use 1-63 letters, digits, '_', '.', '-'"
        )
    return name


# Clients send the resource as the startup `database`, so it must be a plain identifier.
ResourceName = Annotated[str, AfterValidator(_check_resource_name)]


def _check_digest(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256_HEX.match(digest):
        raise PydanticCustomError(
            "sha256_hex",
            "expected the SHA-256 hex digest (64 hex characters) of a token, not the token",
        )
    return digest


TokenDigest = Annotated[str, AfterValidator(_check_digest)]


class _Section(BaseModel):
    # A misspelt key is an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class ProxySettings(_Section):
    """The PostgreSQL wire-protocol listener."""

    listen_host: str = "127.0.0.1"
    listen_port: int = Field(default=6432, ge=0, lt=65536, description="0 picks a free port")
    require_tls_for_non_loopback: bool = Field(
        default=True,
        description=(
            "Refuse plaintext sessions from peers that are not on a loopback address. "
            "With a non-loopback listen_host this requires tls_cert_file/tls_key_file."
        ),
    )
    # The key comes first so that the pair check runs on (and its error names) the cert.
    tls_key_file: Path | None = None
    tls_cert_file: Path | None = Field(default=None, validate_default=True)
    max_message_bytes: int = Field(
        default=64 * MiB,
        ge=64 * 1024,
        le=1024 * MiB - 1,
        description=(
            "Largest single protocol message accepted in either direction (Query, Parse, "
            "Bind, CopyData from clients; DataRow, CopyData from the server). The length "
            "header is checked before any buffer is allocated; a larger message ends the "
            "session. 64 MiB bounds per-connection memory while leaving room for big bytea "
            "values; PostgreSQL's own hard limit is 1 GiB."
        ),
    )
    startup_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Time a client has, in all, to finish SSL negotiation, startup and auth (sending its "
            "token); PostgreSQL's authentication_timeout. A client past it gets 08006"
        ),
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Time allowed to connect and authenticate upstream"
    )
    idle_timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        description=(
            "End a session idle this long outside a transaction (nothing in flight, nothing "
            "parked), as PostgreSQL's idle_session_timeout: FATAL 57P05; null: never"
        ),
    )
    review_wait_seconds: float = Field(
        default=120.0, gt=0, description="How long a parked statement waits for an approval"
    )
    metrics_port: int | None = Field(
        default=None,
        ge=0,
        lt=65536,
        description=(
            "Serve the proxy's Prometheus metrics at http://<metrics_host>:<port>/metrics "
            "(with --workers N, worker i uses port + i); null: not served"
        ),
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the metrics endpoint listens on")
    max_sessions_per_agent: int | None = Field(
        default=10,
        ge=1,
        description=(
            "Concurrent sessions one agent principal (agent:...) may hold, over all its tokens, resources and "
            "proxy processes sharing the store; one more is refused with 53300 before any upstream connection. "
            "null: no cap"
        ),
    )
    max_sessions_per_token: int | None = Field(
        default=5,
        ge=1,
        description="Concurrent sessions one gateway token may hold (any principal), likewise; null: no cap",
    )
    session_slot_lease_seconds: float = Field(
        default=30.0,
        ge=3,
        description=(
            "A counted session's slot is a lease its proxy process renews; a process that dies frees its "
            "slots within this time"
        ),
    )

    @field_validator("tls_cert_file")
    @classmethod
    def _tls_pair(cls, cert: Path | None, info: ValidationInfo) -> Path | None:
        key = info.data.get("tls_key_file")
        if (cert is None) != (key is None):
            raise PydanticCustomError(
                "tls_pair", "tls_cert_file and tls_key_file must be given together"
            )
        host = info.data.get("listen_host", "127.0.0.1")
        if cert is None and info.data.get("require_tls_for_non_loopback") and not is_loopback(host):
            raise PydanticCustomError(
                "tls_required",
                "listen_host '{host}' is not a loopback address and "
                "require_tls_for_non_loopback is true: give tls_cert_file and tls_key_file",
                {"host": host},
            )
        return cert


class ApiSettings(_Section):
    """The broker's HTTP API."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, lt=65536)
    tokens: list[TokenDigest] = Field(
        default_factory=list,
        description=(
            "SHA-256 hex digests of the bearer tokens accepted on /v1/* (see "
            "`hash_api_token`). Empty: /v1/* refuses every request."
        ),
    )


class UpstreamSettings(_Section):
    """Where a resource lives, and (until Vault lands) the static credential for it.

    The credential is held by the proxy alone: never logged, returned, or shown to a client.
    """

    host: str
    port: int = Field(default=5432, gt=0, lt=65536)
    dbname: str
    sslmode: Literal["disable", "prefer", "require", "verify-full"] = "prefer"
    sslrootcert: Path | None = None
    username: SecretStr | None = Field(default=None, description="static credentials only")
    password: SecretStr | None = None


class EgressSettings(_Section):
    """Caps on what a client may read back (proxy.egress); unset: no cap.

    The `_per_agent` budgets span every session of one agent principal (`agent:...`) on the
    resource, across proxy processes sharing the store, in fixed windows of `agent_window`
    aligned to the Unix epoch (`24h` windows start at 00:00 UTC). Persons are exempt: they
    have only the per-statement and per-session caps.
    """

    max_rows_per_statement: int | None = Field(default=None, ge=0, description="Rows one statement may return")
    max_bytes_per_statement: int | None = Field(default=None, ge=0, description="Bytes one statement may return")
    max_rows_per_session: int | None = Field(default=None, ge=0, description="Rows one session may read in all")
    max_bytes_per_session: int | None = Field(default=None, ge=0, description="Bytes one session may read in all")
    max_rows_per_agent: int | None = Field(
        default=None,
        ge=0,
        description=(
            "Rows one agent principal may read from this resource per `agent_window`, over all its "
            "sessions and proxy processes (persons are exempt)"
        ),
    )
    max_bytes_per_agent: int | None = Field(
        default=None,
        ge=0,
        description="Bytes one agent principal may read from this resource per `agent_window` (persons are exempt)",
    )
    agent_window: str = Field(
        default="24h",
        description=(
            "Window of the per-agent budgets (`1h`, `24h`, `7d`): fixed windows aligned to the Unix epoch, "
            "usage starts from zero in each"
        ),
    )

    @field_validator("agent_window")
    @classmethod
    def _window(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 1:
            raise ValueError("agent_window must be at least 1s")
        return value

    def limits(self) -> dict[str, int | None]:
        """The keyword arguments of `proxy.egress.EgressLimits.of`."""
        values: dict[str, int | None] = self.model_dump(exclude={"agent_window"})
        values["agent_window"] = int(parse_duration(self.agent_window).total_seconds())
        return values


class ResourceSettings(_Section):
    """One database the gateway fronts, addressed by clients as the startup `database`."""

    upstream: UpstreamSettings
    description: str = ""
    policy: str = Field(
        default="agent-safe",
        description=(
            "Policy preset name or path to a YAML policy (rules, notify_channels, and the session timeouts "
            "sent at start-up: lock_timeout 5s, statement_timeout 5min, idle_in_transaction_session_timeout 3min, "
            "client_connection_check_interval 10s by default; see broker/policy/loader.py)"
        ),
    )
    masking: dict[str, Any] = Field(
        default_factory=dict, description="Passed as is to broker.masking's MaskingConfig"
    )
    record_results: bool = Field(default=False, description="Also record result rows for replay")
    # Caps per statement, so a SELECT over a big table cannot flood the store.
    record_results_max_rows: int = Field(default=100, ge=0, description="Rows kept per statement")
    record_results_max_bytes: int = Field(default=64 * 1024, ge=0, description="Value bytes kept per statement")
    credentials: CredentialSettings = Field(default_factory=lambda: CredentialSettings())
    egress: EgressSettings = Field(
        default_factory=lambda: EgressSettings(),
        description="Row/byte caps per statement, per session and per agent; exceeding one ends the statement (54000)",
    )

    @model_validator(mode="after")
    def _static_needs_username(self) -> ResourceSettings:
        if self.credentials.provider == "static" and self.upstream.username is None:
            raise PydanticCustomError(
                "credentials", "upstream.username is required unless credentials.provider is vault or local"
            )
        return self


class WebhookSink(_Section):
    """POST batches of audit records, as a JSON array, to a SIEM's HTTP collector."""

    kind: Literal["webhook"]
    url: str = Field(pattern=r"^https?://", description="Collector URL (http or https)")
    headers: dict[str, SecretStr] = Field(default_factory=dict, description="e.g. Authorization; kept secret")
    batch_size: int = Field(default=100, ge=1, le=10_000)
    timeout: float = Field(default=5.0, gt=0, description="Seconds per request")


class SyslogSink(_Section):
    """One RFC 5424 datagram per audit record over UDP."""

    kind: Literal["syslog"]
    address: str = Field(default="127.0.0.1:514", description="host:port of the syslog receiver")
    facility: Literal[
        "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
        "local0", "local1", "local2", "local3", "local4", "local5", "local6", "local7",
    ] = "authpriv"
    batch_size: int = Field(default=100, ge=1, le=10_000)


class WitnessSettings(_Section):
    """Where the worker writes signed checkpoints of the chain head, outside the store."""

    file: Path | None = Field(
        default=None,
        description=(
            "Append-only JSON Lines file of signed checkpoints and prunes; put it on another volume, "
            "a WORM bucket mount or a `chattr +a` file (jitgate only ever appends)"
        ),
    )
    webhook_url: str | None = Field(
        default=None, pattern=r"^https?://", description="Also POST each entry's JSON here (http or https)"
    )
    webhook_headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Headers of the webhook POST, e.g. Authorization; kept secret"
    )
    webhook_timeout: float = Field(default=5.0, gt=0, description="Seconds per webhook request")
    to_sink: bool = Field(default=False, description="Also send each entry through `audit.sink`")
    interval: str = Field(default="60s", description="How often the worker signs and witnesses the head")

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 1:
            raise ValueError("audit.witness.interval must be at least 1s")
        return value

    @property
    def configured(self) -> bool:
        return self.file is not None or self.webhook_url is not None or self.to_sink


class AuditSettings(_Section):
    """Retention of the audit log (`jitgate audit prune`), its signed checkpoints, and a SIEM sink."""

    retention_days: int | None = Field(
        default=None, ge=1, description="Archive and prune records older than this; null keeps everything"
    )
    archive_dir: Path | None = Field(default=None, description="Where archives go; default <data_dir>/audit-archive")
    signing_key_file: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs checkpoints (`jitgate audit checkpoint`)"
    )
    verify_key_files: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (PEM) that checkpoints may be signed with; default: the signing key's",
    )
    sink: Annotated[WebhookSink | SyslogSink, Field(discriminator="kind")] | None = Field(
        default=None, description="Also forward every appended audit record to a SIEM (the store stays the truth)"
    )
    witness: WitnessSettings = Field(
        default_factory=lambda: WitnessSettings(),
        description="External witness of signed checkpoints (`jitgate audit verify --witness`)",
    )
    prune_interval: str = Field(
        default="24h", description="How often the worker prunes when retention_days is set"
    )

    @field_validator("prune_interval")
    @classmethod
    def _prune_interval(cls, value: str) -> str:
        if parse_duration(value).total_seconds() < 60:
            raise ValueError("audit.prune_interval must be at least 60s")
        return value


class WorkerSettings(_Section):
    """The Celery worker (`jitgate worker`)."""

    metrics_port: int | None = Field(
        default=None,
        ge=0,
        lt=65536,
        description=(
            "Serve the worker's Prometheus metrics (witness deliveries, approvals expired, Slack and Vault "
            "errors), summed over its pool's processes, at http://<metrics_host>:<port>/metrics; null: not served"
        ),
    )
    metrics_host: str = Field(default="127.0.0.1", description="Address the worker's metrics endpoint listens on")


class Settings(BaseSettings):
    """All of jitgate's settings. Build it with `load_settings` to get file + environment."""

    model_config = SettingsConfigDict(
        env_prefix="JITGATE_",
        env_nested_delimiter="__",
        env_parse_none_str="null",
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Path(".jitgate")
    store_url: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "SQLAlchemy async URL of the store: sqlite+aiosqlite:///PATH or "
            "postgresql+asyncpg://USER:PASS@HOST/DB. Empty: <data_dir>/jitgate.db."
        ),
    )
    proxy: ProxySettings = Field(default_factory=lambda: ProxySettings())
    api: ApiSettings = Field(default_factory=lambda: ApiSettings())
    resources: dict[ResourceName, ResourceSettings] = Field(default_factory=dict)
    vault: VaultSettings | None = None
    oidc: OidcSettings = Field(default_factory=lambda: OidcSettings())
    access: AccessSettings = Field(default_factory=lambda: AccessSettings())
    audit: AuditSettings = Field(default_factory=lambda: AuditSettings())
    approvals: ApprovalSettings = Field(default_factory=lambda: ApprovalSettings())
    slack: SlackSettings | None = None
    console: ConsoleSettings = Field(default_factory=lambda: ConsoleSettings())
    mcp: McpSettings = Field(default_factory=lambda: McpSettings())
    worker: WorkerSettings = Field(default_factory=lambda: WorkerSettings())
    installation: Installation = Field(
        default="default",
        description=(
            "This deployment's name in a shared broker: its Celery queue, Celery's keys and the "
            "approvals channel carry it. Deployments sharing one Redis need different names."
        ),
    )
    broker_url: SecretStr = Field(
        default=SecretStr(""),
        description=(
            "Celery broker and approvals bus: redis://HOST:PORT/DB. Empty: Redis at "
            "127.0.0.1:6379 when it answers, else kombu's SQLAlchemy transport over "
            "<data_dir>/celery.db (decisions then reach the proxy in-process only)."
        ),
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_json: bool = False

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("store_url")
    @classmethod
    def _async_driver(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if not url:
            return SecretStr("")
        scheme, sep, rest = url.partition("://")
        if not sep:
            raise PydanticCustomError("store_url", "not a URL (expected scheme://...)")
        # Operators paste plain libpq/SQLite URLs; the store needs the async drivers.
        driver = {
            "postgres": "postgresql+asyncpg",
            "postgresql": "postgresql+asyncpg",
            "postgresql+asyncpg": "postgresql+asyncpg",
            "sqlite": "sqlite+aiosqlite",
            "sqlite+aiosqlite": "sqlite+aiosqlite",
        }.get(scheme.lower())
        if driver is None:
            raise PydanticCustomError(
                "store_url",
                "unsupported scheme '{scheme}': use sqlite+aiosqlite:// or postgresql+asyncpg://",
                {"scheme": scheme},
            )
        return SecretStr(f"{driver}://{rest}")

    @field_validator("vault")
    @classmethod
    def _vault_configured(cls, vault: VaultSettings | None, info: ValidationInfo) -> VaultSettings | None:
        # A field validator (declared after `resources`) so that the error names `vault`.
        resources = info.data.get("resources") or {}
        users = [n for n, r in resources.items() if r.credentials.provider == "vault"]
        if users and vault is None:
            raise PydanticCustomError(
                "vault", "required: resources {names} use provider 'vault'", {"names": ", ".join(users)}
            )
        return vault

    @model_validator(mode="after")
    def _default_store(self) -> Settings:
        if not self.store_url.get_secret_value():
            self.store_url = SecretStr(f"sqlite+aiosqlite:///{self.data_dir / 'jitgate.db'}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlDataSource(settings_cls))


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback IP literals; False for wildcards and other names."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def hash_api_token(token: str) -> str:
    """The digest to put in `api.tokens` for a bearer token."""
    return hashlib.sha256(token.encode()).hexdigest()


# The YAML source reads the mapping `load_settings` parsed; a context variable carries it
# because pydantic-settings builds sources from the class, not from the call.
_yaml_data: ContextVar[dict[str, Any] | None] = ContextVar("jitgate_yaml_data", default=None)


class _YamlDataSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        data = _yaml_data.get() or {}
        return data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_yaml_data.get() or {})


@contextmanager
def _yaml_context(data: dict[str, Any] | None) -> Iterator[None]:
    token = _yaml_data.set(data)
    try:
        yield
    finally:
        _yaml_data.reset(token)


def load_settings(path: str | Path | None = None) -> Settings:
    """Load settings from `path` (or `$JITGATE_CONFIG`, or none) plus the environment.

    Raises `ConfigError` naming the file and, per problem, the dotted key path and reason.
    """
    if path is None:
        path = os.environ.get(CONFIG_ENV_VAR) or None
    source = str(path) if path is not None else "environment"
    data = _read_yaml(Path(path)) if path is not None else None
    try:
        with _yaml_context(data):
            return Settings()
    except ValidationError as exc:
        found = exc.errors(include_url=False, include_input=False)
        errors = [(_dotted(err["loc"]), err["msg"]) for err in found]
        details = [{"loc": err["loc"], "type": err["type"], "ctx": err.get("ctx") or {}} for err in found]
        noun = "error" if len(errors) == 1 else "errors"
        raise ConfigError(
            f"{source}: {len(errors)} configuration {noun}", source=source, errors=errors, details=details
        ) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: invalid YAML{where}: {problem}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping, not {type(data).__name__}",
            source=str(path),
        )
    return _resolve_paths(data, path.resolve().parent)


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            return str(base / value)
        if isinstance(value, str):
            return str(Path(value).expanduser())
        return value

    data = dict(data)
    if "data_dir" in data:
        data["data_dir"] = fix(data["data_dir"])
    proxy = data.get("proxy")
    if isinstance(proxy, dict):
        proxy = data["proxy"] = dict(proxy)
        for key in ("tls_cert_file", "tls_key_file"):
            if key in proxy:
                proxy[key] = fix(proxy[key])
    resources = data.get("resources")
    if isinstance(resources, dict):
        resources = data["resources"] = dict(resources)
        for name, resource in resources.items():
            if not isinstance(resource, dict):
                continue
            resource = resources[name] = dict(resource)
            policy = resource.get("policy")
            if isinstance(policy, str) and ("/" in policy or policy.endswith((".yaml", ".yml"))):
                resource["policy"] = fix(policy)
            upstream = resource.get("upstream")
            if isinstance(upstream, dict) and "sslrootcert" in upstream:
                upstream = resource["upstream"] = dict(upstream)
                upstream["sslrootcert"] = fix(upstream["sslrootcert"])
    return data


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a dict key: the key itself names it
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
