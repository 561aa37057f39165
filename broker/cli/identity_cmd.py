"""`jitgate login`, `jitgate connect`, `jitgate grants revoke`: the requester's side.

    jitgate login [--issuer URL] [--client-id ID] [--api URL]
    jitgate connect demo --role readonly --reason "ticket 42" --ttl 30m [--exec psql]
    eval "$(jitgate connect demo --role readonly --reason ...)"; psql "$JITGATE_DSN"
    jitgate grants revoke TOKEN_ID

`login` runs the OAuth device flow (RFC 8628) against the issuer and keeps the token in
`$JITGATE_HOME/token.json` (default `~/.config/jitgate/token.json`), readable by the owner
only. `connect` sends it as the bearer of `POST /v1/access-requests`; `$JITGATE_TOKEN`
(e.g. a CI job's OIDC token) takes precedence over the file. The gateway token goes to the
client in `PGPASSWORD`, never on a command line, where other users could read it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit

import httpx
import typer

from broker.config import load_settings
from broker.exceptions import ConfigError

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_API = "http://127.0.0.1:8080"
DEMO_INFO_FILE = ".jitgate/demo.json"  # `jitgate demo`'s default --info-file
HTTP_TIMEOUT = 15.0

grants_app = typer.Typer(help="Access grants (gateway tokens).", no_args_is_help=True)

ApiOption = Annotated[
    str | None,
    typer.Option("--api", help="Broker API URL (default: $JITGATE_API_URL, login's, .jitgate/demo.json's, or local)"),
]


def register(app: typer.Typer) -> None:
    app.command("login")(login)
    app.command("connect")(connect)
    app.add_typer(grants_app, name="grants")


def home() -> Path:
    return Path(os.environ.get("JITGATE_HOME") or Path.home() / ".config" / "jitgate")


def save_token(data: dict[str, Any]) -> Path:
    path = home() / "token.json"
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Created 0600 from the start (no window where it is world-readable), and forced to 0600
    # should an older file have looser bits.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    return path


def load_token() -> dict[str, Any]:
    env = os.environ.get("JITGATE_TOKEN")
    if env:
        return {"token": env}
    path = home() / "token.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        _fail("not logged in: run `jitgate login` (or set JITGATE_TOKEN)")
    if data.get("expires_at") and float(data["expires_at"]) < time.time():
        _fail("your login has expired: run `jitgate login` again")
    return data


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _api_url(api: str | None, saved: dict[str, Any]) -> str:
    """--api, $JITGATE_API_URL, the login's API, a running demo's (its info file in the working
    directory: the demo takes a free port when 8080 is busy), else the local default."""
    return (api or os.environ.get("JITGATE_API_URL") or saved.get("api") or _demo_api_url()
            or DEFAULT_API).rstrip("/")


def _demo_api_url() -> str | None:
    """The API of a demo running here, from its operator file, trusted only as the demo writes
    it: owned by this user, mode 0600, and a loopback http URL. Anything else (a file someone
    else could have put in this directory) would receive the bearer token: it is ignored."""
    path = Path(DEMO_INFO_FILE)
    try:
        with path.open("rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o077:
                return None
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    url = data.get("api_url") if isinstance(data, dict) else None
    if not isinstance(url, str):
        return None
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    loopback = parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1")
    return url if loopback and port is not None and not parts.path.strip("/") else None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail else f"HTTP {response.status_code}"


def call_api(
    method: str, path: str, api: str | None, body: dict[str, Any] | None = None
) -> tuple[httpx.Response, str, str]:
    """Call the broker API with the saved login; (response, API base URL, bearer).

    An unreachable broker ends the command with a message naming only the error class."""
    saved = load_token()
    base = _api_url(api, saved)
    try:
        response = httpx.request(
            method, f"{base}{path}", json=body,
            headers={"Authorization": f"Bearer {saved['token']}"}, timeout=HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        _fail(f"broker unreachable: {type(exc).__name__}")
    return response, base, saved["token"]


def _print_exports(grant: dict[str, Any]) -> None:
    typer.echo(f"export PGPASSWORD={shlex.quote(grant['token'])}")
    typer.echo(f"export JITGATE_DSN={shlex.quote(grant['dsn'])}")


def _default_issuer() -> tuple[str | None, str | None]:
    try:
        issuers = load_settings().oidc.issuers
    except ConfigError:
        return None, None
    if not issuers:
        return None, None
    audience = issuers[0].audience
    client_id = issuers[0].client_id or (audience if isinstance(audience, str) else audience[0])
    return issuers[0].issuer, client_id


def login(
    issuer: Annotated[str | None, typer.Option(help="OIDC issuer URL (default: the config's first)")] = None,
    client_id: Annotated[str | None, typer.Option(help="OAuth client id (default: issuer's audience)")] = None,
    api: ApiOption = None,
) -> None:
    """Log in with the OIDC device flow and keep the token for `jitgate connect`."""
    default_issuer, default_client = _default_issuer()
    issuer = issuer or default_issuer
    if not issuer:
        _fail("no issuer: pass --issuer or configure oidc.issuers", 2)
    client_id = client_id or default_client or "jitgate"
    with httpx.Client(timeout=HTTP_TIMEOUT) as http:
        try:
            meta = http.get(issuer.rstrip("/") + "/.well-known/openid-configuration").raise_for_status().json()
            device = http.post(
                meta["device_authorization_endpoint"],
                data={"client_id": client_id, "scope": "openid email profile groups"},
            ).raise_for_status().json()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            _fail(f"cannot start the device flow at {issuer}: {type(exc).__name__}")
        where = device.get("verification_uri_complete") or device["verification_uri"]
        typer.echo(f"Open {where} and confirm the code {device['user_code']}", err=True)
        token = _poll(http, meta["token_endpoint"], device, client_id)
    bearer = token.get("id_token") or token["access_token"]
    saved = {"issuer": issuer, "token": bearer, "expires_at": time.time() + float(token.get("expires_in", 3600))}
    if api:
        saved["api"] = api
    path = save_token(saved)
    typer.echo(f"logged in; token saved to {path}", err=True)


def _poll(http: httpx.Client, url: str, device: dict[str, Any], client_id: str) -> dict[str, Any]:
    interval = float(device.get("interval", 5))
    deadline = time.monotonic() + float(device.get("expires_in", 600))
    while time.monotonic() < deadline:
        response = http.post(
            url, data={"grant_type": DEVICE_GRANT, "device_code": device["device_code"], "client_id": client_id}
        )
        if response.status_code == 200:
            token: dict[str, Any] = response.json()
            return token
        error = response.json().get("error") if response.headers.get("content-type", "").startswith(
            "application/json"
        ) else None
        if error == "slow_down":
            interval += 5  # RFC 8628 3.5
        elif error != "authorization_pending":
            _fail(f"login failed: {error or _detail(response)}")
        time.sleep(interval)
    _fail("login timed out: the code was not confirmed in time")


def connect(
    resource: Annotated[str, typer.Argument(help="Resource (database) name")],
    role: Annotated[str, typer.Option(help="Database role wanted")],
    reason: Annotated[str, typer.Option(help="Why you need access (mandatory; shown to approvers)")],
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30m (default: the broker's)")] = None,
    exec_: Annotated[
        str | None, typer.Option("--exec", help="Run this client with the DSN appended, e.g. 'psql -X'")
    ] = None,
    wait: Annotated[
        int, typer.Option(help="Seconds to wait for an approval when one is needed (0: do not wait)")
    ] = 600,
    api: ApiOption = None,
) -> None:
    """Request access; print `export PGPASSWORD=...` and the DSN, or run a client with them.

    A request that needs approval waits (up to --wait) until an approver decides, in Slack,
    the console or with `jitgate approvals approve ID`; then the token is collected, once."""
    if not reason.strip():
        _fail("--reason must not be empty", 2)
    body = {"resource": resource, "role": role, "reason": reason, **({"ttl": ttl} if ttl else {})}
    response, base, bearer = call_api("POST", "/v1/access-requests", api, body)
    if response.status_code != 201:
        _fail(f"access refused: {_detail(response)}")
    grant = response.json()
    if grant["status"] != "granted":
        grant = _await_approval(grant, base, bearer, wait)
    typer.echo(
        f"granted {grant['role']} on {grant['resource']} until {grant['expires_at']} "
        f"(grant {grant['token_id']}, request {grant['id']})",
        err=True,
    )
    if exec_:
        argv = [*shlex.split(exec_), grant["dsn"]]
        env = {**os.environ, "PGPASSWORD": grant["token"]}
        try:
            code = subprocess.call(argv, env=env)  # noqa: S603 - the user's own command
        except OSError as exc:
            _fail(f"cannot run {argv[0]}: {exc.strerror or exc}", 127)
        raise typer.Exit(code)
    _print_exports(grant)


def _await_approval(grant: dict[str, Any], api: str, bearer: str, wait: int) -> dict[str, Any]:
    approvers = ", ".join(grant.get("approvers") or []) or "an approver"
    request_id = grant["id"]
    if wait <= 0:
        _fail(f"request {request_id} is {grant['status']}: waiting for {approvers}", 3)
    typer.echo(f"request {request_id} needs approval by {approvers}; waiting up to {wait} s…", err=True)
    headers = {"Authorization": f"Bearer {bearer}"}
    deadline = time.monotonic() + wait
    status_ = grant["status"]
    with httpx.Client(timeout=HTTP_TIMEOUT, headers=headers) as http:
        while status_ == "pending" and time.monotonic() < deadline:
            time.sleep(2)
            try:
                status_ = http.get(f"{api}/v1/access-requests/{request_id}").json()["status"]
            except (httpx.HTTPError, ValueError, KeyError):
                continue  # the broker may be restarting: keep waiting until the deadline
        if status_ != "approved":
            reason = "" if status_ != "pending" else f" after {wait} s (it stays open; run again later)"
            _fail(f"request {request_id} is {status_}{reason}", 3)
        response = http.post(f"{api}/v1/access-requests/{request_id}/token")
    if response.status_code != 200:
        _fail(f"could not collect the grant: {_detail(response)}")
    collected: dict[str, Any] = response.json()
    return collected


@grants_app.command("collect")
def collect(
    request_id: Annotated[str, typer.Argument(help="Id of an approved access request of yours")],
    api: ApiOption = None,
) -> None:
    """Collect the gateway token of an approved request (once): prints the exports."""
    response, _, _ = call_api("POST", f"/v1/access-requests/{request_id}/token", api)
    if response.status_code != 200:
        _fail(f"cannot collect: {_detail(response)}", 3)
    _print_exports(response.json())


@grants_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="Grant (token) id printed by `connect`")],
    api: ApiOption = None,
) -> None:
    """Revoke a grant: its token stops working for new sessions."""
    response, _, _ = call_api("POST", f"/v1/grants/{token_id}/revoke", api)
    if response.status_code != 200:
        _fail(f"cannot revoke: {_detail(response)}")
    state = "revoked" if response.json()["revoked"] else "was already revoked"
    typer.echo(f"grant {token_id} {state}", err=True)
