"""`jitgate config check`: validate a configuration the way the services will load it.

    jitgate config check [--config FILE] [--env-file FILE] [--json]

The file goes through `broker.config.load_settings` (so the `JITGATE_*` environment applies,
as it will for the service), then what validation cannot see is checked too: files the
settings name (TLS, CA, Vault JWT, audit keys) must exist, and every resource's policy and
masking section must build. Every problem is printed at once as `<dotted.key.path>:
<message>` with a hint to fix it; the exit status is 1 when there is any, else 0 with a
summary of resources, policies and OIDC issuers.

`--env-file` reads `KEY=VALUE` lines (the compose `env_file` format) into the environment for
the check, under whatever the environment already has, so that a YAML file whose secrets
come from the environment can be checked as a deployment will see it.
"""

from __future__ import annotations

import difflib
import json
import os
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.table import Table

from broker.config import Settings, load_settings
from broker.exceptions import ConfigError

config_app = typer.Typer(help="Check the configuration file; print its reference.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    hint: str | None = None


@config_app.command("reference")
def reference() -> None:
    """Print the configuration reference (Markdown), generated from the models: docs/CONFIG.md."""
    from broker.config_reference import render

    typer.echo(render(), nl=False)


@config_app.command("check")
def check(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Config file (default: $JITGATE_CONFIG)", show_default=False),
    ] = None,
    env_file: Annotated[
        Path | None,
        typer.Option(help="KEY=VALUE lines added to the environment for the check (compose env_file)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object")] = False,
) -> None:
    """Validate the configuration: every error with its key path and a hint, exit 1 if any."""
    source = str(config) if config else os.environ.get("JITGATE_CONFIG") or "environment"
    try:
        with _extra_environment(env_file):
            settings, problems = run_checks(config)
    except OSError as exc:
        settings, problems = None, [Problem("", f"cannot read {env_file}: {exc.strerror or exc}")]
    if as_json:
        typer.echo(json.dumps({"source": source, "ok": not problems, "errors": [asdict(p) for p in problems]}))
    elif problems:
        _print_problems(source, problems)
    else:
        assert settings is not None
        _print_summary(source, settings)
    raise typer.Exit(1 if problems else 0)


def run_checks(config: Path | None) -> tuple[Settings | None, list[Problem]]:
    """Load `config` and check it; the settings are None when they did not validate."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        return None, _validation_problems(exc)
    return settings, _file_problems(settings) + _resource_problems(settings)


# --- problems ----------------------------------------------------------------------------


def _validation_problems(exc: ConfigError) -> list[Problem]:
    if not exc.errors:  # unreadable file or invalid YAML: the message says it all
        return [Problem("", str(exc), "check the file's path and its YAML syntax")]
    problems = []
    for i, (path, message) in enumerate(exc.errors):
        detail = exc.details[i] if i < len(exc.details) else {}
        problems.append(Problem(path, message, hint_for(detail, path)))
    return problems


def _file_problems(settings: Settings) -> list[Problem]:
    files: list[tuple[str, Path | None]] = [
        ("proxy.tls_cert_file", settings.proxy.tls_cert_file),
        ("proxy.tls_key_file", settings.proxy.tls_key_file),
        ("audit.signing_key_file", settings.audit.signing_key_file),
        *((f"audit.verify_key_files[{i}]", p) for i, p in enumerate(settings.audit.verify_key_files)),
    ]
    if settings.vault is not None:
        files += [("vault.ca_cert", settings.vault.ca_cert), ("vault.auth.jwt_file", settings.vault.auth.jwt_file)]
    for name, resource in settings.resources.items():
        files.append((f"resources.{name}.upstream.sslrootcert", resource.upstream.sslrootcert))
    return [
        Problem(path, f"no such file: {file}", "fix the path (relative paths are resolved against the config file)")
        for path, file in files
        if file is not None and not file.is_file()
    ]


def _resource_problems(settings: Settings) -> list[Problem]:
    from broker.masking import MaskingConfig
    from broker.policy import PolicyConfigError, PolicyEngine

    problems = []
    for name, resource in settings.resources.items():
        try:
            PolicyEngine.load(resource.policy)
        except PolicyConfigError as exc:
            for where, message in exc.errors:
                path = f"resources.{name}.policy" + (f" ({resource.policy}: {where})" if where else "")
                problems.append(Problem(path, message, _policy_hint(resource.policy)))
        try:
            MaskingConfig.model_validate(resource.masking or {})
        except ValidationError as err:
            for e in err.errors(include_url=False, include_input=False):
                path = ".".join([f"resources.{name}.masking", *(str(p) for p in e["loc"])])
                problems.append(Problem(path, e["msg"], "see broker/masking's MaskingConfig for the keys"))
    return problems


def _policy_hint(policy: str) -> str:
    from broker.policy.presets import PRESETS

    if "/" in policy or policy.endswith((".yaml", ".yml")):
        return "fix the policy file (`jitgate policy check --policy FILE --sql ...` tries it out)"
    return f"use a preset ({', '.join(sorted(PRESETS))}) or the path of a policy YAML file"


# --- hints -------------------------------------------------------------------------------

# Validators of jitgate's own (PydanticCustomError types) and what fixes them.
_CUSTOM_HINTS = {
    "tls_pair": "set both proxy.tls_cert_file and proxy.tls_key_file (PEM files), or neither",
    "tls_required": (
        "give proxy.tls_cert_file and proxy.tls_key_file, or listen on 127.0.0.1; "
        "require_tls_for_non_loopback: false sends gateway tokens in clear text"
    ),
    "resource_name": "rename the resource: it is the database name clients connect to",
    "sha256_hex": "put the digest, not the token: `jitgate token new-api` prints both",
    "store_url": "e.g. postgresql+asyncpg://USER:PASS@HOST/DB or sqlite+aiosqlite:///PATH (or leave it empty)",
    "vault": "add a top-level `vault:` section with `address` and `auth` (approle, jwt or token)",
    "vault_auth": (
        "approle needs role_id and secret_id, jwt needs role and jwt or jwt_file, token needs token; "
        "secrets can come from the environment, e.g. JITGATE_VAULT__AUTH__SECRET_ID"
    ),
    "credentials": "see the docstring of broker/credentials/settings.py for each provider's keys",
}

_TYPE_HINTS = {
    "missing": "add `{key}`: it is required",
    "int_parsing": "use a whole number",
    "int_type": "use a whole number",
    "int_from_float": "use a whole number",
    "float_parsing": "use a number",
    "float_type": "use a number",
    "bool_parsing": "use true or false",
    "bool_type": "use true or false",
    "string_type": "use a string (quote it if YAML reads it as something else)",
    "list_type": "use a list, e.g. [a, b] or one `- item` per line",
    "dict_type": "use a mapping of `key: value` lines",
    "model_type": "use a mapping of `key: value` lines",
    "model_attributes_type": "use a mapping of `key: value` lines",
    "literal_error": "use one of {expected}",
    "enum": "use one of {expected}",
    "greater_than": "use a value greater than {gt}",
    "greater_than_equal": "use a value of at least {ge}",
    "less_than": "use a value less than {lt}",
    "less_than_equal": "use a value of at most {le}",
    "too_short": "give at least {min_length} item(s)",
    "too_long": "give at most {max_length} item(s)",
    "string_pattern_mismatch": "the value must match {pattern}",
    "union_tag_invalid": "set `kind` to one of {expected_tags}",
    "union_tag_not_found": "add `kind:` ({discriminator})",
    "path_type": "use a file path",
}


def hint_for(detail: dict[str, Any], path: str) -> str | None:
    """A fix for one validation error, from its pydantic type, context and location."""
    kind = str(detail.get("type", ""))
    loc = tuple(detail.get("loc", ()))
    ctx = {k: v for k, v in (detail.get("ctx") or {}).items() if isinstance(v, str | int | float)}
    if kind in _CUSTOM_HINTS:
        return _CUSTOM_HINTS[kind]
    if kind == "extra_forbidden":
        return _unknown_key_hint(loc)
    if kind == "value_error" and path.endswith("ttl"):
        return "use a duration such as 30m, 8h or 1d"
    template = _TYPE_HINTS.get(kind)
    if template is None:
        return None
    key = str(loc[-1]) if loc else path
    try:
        return template.format(key=key, **ctx)
    except (KeyError, IndexError):
        return template.split("{", 1)[0].strip() or None


def _unknown_key_hint(loc: tuple[Any, ...]) -> str:
    key = str(loc[-1]) if loc else ""
    allowed = _keys_at(loc[:-1])
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key: did you mean `{close[0]}`?"
    if allowed:
        return "unknown key: remove it; allowed here: " + ", ".join(sorted(allowed))
    return "unknown key: remove it"


def _keys_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the settings accept at `loc` (walking models, dicts and lists)."""
    current: list[Any] = [Settings]
    for part in loc:
        nxt: list[Any] = []
        for tp in current:
            for option in _unwrap(tp):
                if isinstance(option, type) and issubclass(option, BaseModel):
                    field = option.model_fields.get(str(part))
                    if field is not None:
                        nxt.append(field.annotation)
                    elif len(_models(current)) > 1:
                        nxt.append(option)  # a union's tag in the location: stay on the model
                elif typing.get_origin(option) in (dict, list):
                    nxt.append(typing.get_args(option)[-1])
        current = nxt
    keys: set[str] = set()
    for tp in current:
        for model in _models([tp]):
            keys.update(model.model_fields)
    return sorted(keys)


def _unwrap(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [x for arg in typing.get_args(tp) for x in _unwrap(arg)]
    return [tp]


def _models(tps: list[Any]) -> list[type[BaseModel]]:
    return [o for tp in tps for o in _unwrap(tp) if isinstance(o, type) and issubclass(o, BaseModel)]


# --- output ------------------------------------------------------------------------------


def _print_problems(source: str, problems: list[Problem]) -> None:
    noun = "error" if len(problems) == 1 else "errors"
    typer.echo(f"{source}: {len(problems)} {noun}")
    for p in problems:
        typer.echo(f"  {p.path}: {p.message}" if p.path else f"  {p.message}")
        if p.hint:
            typer.echo(f"      fix: {p.hint}")


def _print_summary(source: str, settings: Settings) -> None:
    console = Console(highlight=False, soft_wrap=True)
    console.print(f"[green]OK[/green] {source}")
    resources = Table(title="resources", title_justify="left")
    for column in ("name", "upstream", "policy", "credentials", "masking"):
        resources.add_column(column)
    for name, r in sorted(settings.resources.items()):
        masking = "off" if r.policy == "observe" else ("custom" if r.masking else "default")
        resources.add_row(
            name, f"{r.upstream.host}:{r.upstream.port}/{r.upstream.dbname}", r.policy, r.credentials.provider, masking
        )
    console.print(resources if settings.resources else "resources: none (the proxy will refuse every connection)")
    if settings.oidc.issuers:
        issuers = Table(title="OIDC issuers", title_justify="left")
        for column in ("issuer", "audience", "kind"):
            issuers.add_column(column)
        for i in settings.oidc.issuers:
            audience = i.audience if isinstance(i.audience, str) else ", ".join(i.audience)
            issuers.add_row(i.issuer, audience, i.kind)
        console.print(issuers)
    else:
        console.print("OIDC issuers: none (only gateway and API tokens are accepted)")
    p = settings.proxy
    tls = "TLS" if p.tls_cert_file else "no TLS"
    console.print(f"proxy: {p.listen_host}:{p.listen_port} ({tls})    api: {settings.api.host}:{settings.api.port}")
    store = settings.store_url.get_secret_value().split("://", 1)[0]
    vault = f"vault: {settings.vault.auth.method} auth" if settings.vault else "vault: not configured"
    console.print(f"store: {store}    {vault}    access rules: {len(settings.access.rules)}")
    broker_url = getattr(settings, "broker_url", None)
    queue = broker_url.get_secret_value().split("://", 1)[0] if broker_url else ""
    slack = getattr(settings, "slack", None)
    console.print(
        f"task queue: {queue or 'Redis on 127.0.0.1 if it answers, else SQLite'}    "
        f"slack: {'channel ' + slack.channel if slack else 'not configured'}"
    )


@contextmanager
def _extra_environment(env_file: Path | None) -> Iterator[None]:
    if env_file is None:
        yield
        return
    from dotenv import dotenv_values

    if not env_file.is_file():
        raise FileNotFoundError(2, "no such file", str(env_file))
    values = {k: v for k, v in dotenv_values(env_file).items() if v is not None and k not in os.environ}
    os.environ.update(values)
    try:
        yield
    finally:
        for key in values:
            os.environ.pop(key, None)
