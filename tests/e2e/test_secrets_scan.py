"""A whole run scanned for secrets: nothing an operator configured or Vault issued may leak.

One gateway with a Vault (OpenBao) resource, approvals and Slack settings, its API app, a
client session that hits errors, a masked read and a parked statement approved in between.
Everything a person or agent could see is collected: structlog output (every logger, the
proxy's thread included), error and notice texts and ParameterStatus seen by the client,
the API's /v1/sessions, /v1/sessions/<id>, /v1/approvals and /v1/audit/export (jsonl, csv,
ocsf), and the store's files on disk. None may hold the upstream passwords, the dynamic
role's password, the gateway token, the API token, the Slack bot token or signing secret.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import structlog

from broker.api.app import create_app
from broker.approvals.model import Status
from broker.approvals.settings import ApprovalRuleSettings, ApprovalSettings, SlackSettings
from broker.config import ApiSettings, ProxySettings, ResourceSettings, UpstreamSettings, hash_api_token
from broker.credentials.settings import CredentialSettings
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway
from tests.e2e.test_approvals import DBA, service, wait_pending
from tests.openbao_fixture import VaultFixture
from tests.slack_double import SlackDouble

pytestmark = pytest.mark.e2e

API_TOKEN = "jga_secrets-scan-admin-0123456789"
SIGNING_SECRET = "scan-signing-secret-5f2a9c"


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackDouble]:
    with SlackDouble() as double:
        yield double


@pytest.fixture(scope="module")
def gw(upstream, demo_roles, openbao: VaultFixture, slack: SlackDouble) -> Iterator[Gateway]:
    extra = {"vault_demo": ResourceSettings(
        upstream=UpstreamSettings(host=upstream.host, port=upstream.port, dbname="demo", sslmode="disable"),
        credentials=CredentialSettings(provider="vault"),
    )}
    approvals = ApprovalSettings(rules=[ApprovalRuleSettings(approvers=["dba"])])
    slack_settings = SlackSettings(
        bot_token=slack.bot_token, signing_secret=SIGNING_SECRET, channel="C_APPROVALS", api_url=slack.base_url,
    )
    with tempfile.TemporaryDirectory(prefix="jitgate-scan-") as tmp:
        gateway = start_gateway(
            upstream, demo_roles, Path(tmp), extra=extra, vault=openbao.settings(), approvals=approvals,
            slack=slack_settings, proxy=ProxySettings(listen_port=0, review_wait_seconds=20),
        )
        gateway.settings = gateway.settings.model_copy(update={"api": ApiSettings(tokens=[hash_api_token(API_TOKEN)])})
        try:
            yield gateway
        finally:
            stop_gateway(gateway)


def _api_texts(gw: Gateway) -> list[str]:
    async def fetch() -> list[str]:
        app = create_app(gw.settings, gw.store, approvals_service=service(gw))
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://jitgate.test",
                                     headers=headers) as client:
            texts = []
            sessions = await client.get("/v1/sessions")
            assert sessions.status_code == 200, sessions.text
            texts.append(sessions.text)
            for s in sessions.json()[:5]:
                detail = await client.get(f"/v1/sessions/{s['id']}")
                assert detail.status_code == 200, detail.text
                texts.append(detail.text)
            approvals = await client.get("/v1/approvals")
            assert approvals.status_code == 200 and approvals.json(), approvals.text
            texts.append(approvals.text)
            for fmt in ("jsonl", "csv", "ocsf"):
                export = await client.get("/v1/audit/export", params={"format": fmt})
                assert export.status_code == 200 and export.text, export.text
                texts.append(export.text)
            texts.append((await client.get("/v1/sessions", headers={"Authorization": "Bearer wrong"})).text)
            return texts

    return list(gw.call(fetch()))


def test_no_secret_anywhere_after_a_full_run(gw, upstream, demo_roles, slack):
    token = gw.token("vault_demo")
    with psycopg.connect(upstream.dsn("demo"), autocommit=True) as admin:
        admin.execute("create table if not exists scan_scratch (id int)")
        admin.execute("delete from scan_scratch")
        admin.execute("insert into scan_scratch values (1), (2)")
        admin.execute("grant all on scan_scratch to public")
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        with psycopg.connect(gw.dsn("vault_demo", token=token), autocommit=True, application_name="scan") as conn:
            conn.add_notice_handler(lambda n: seen.append(f"{n.severity} {n.message_primary} {n.message_detail}"))
            dyn_user = conn.execute("select session_user").fetchone()[0]
            dyn_passwords = [c.password for c, _ in gw.server.ctx.credentials._issued.values()]
            assert dyn_passwords
            seen.append(repr(conn.info.parameter_status("session_authorization")))
            seen.append(repr(conn.execute("select * from customers limit 5").fetchall()))
            for sql in ("select 1/0", "select pg_read_file('/etc/passwd')", "select * from no_such_table",
                        "set role postgres", "selec * form x"):
                try:
                    conn.execute(sql)
                except psycopg.Error as exc:
                    seen.append(f"{exc.sqlstate} {exc} {exc.diag.message_detail} {exc.diag.message_hint}")
            # A parked statement, approved while the client waits.
            result: list[object] = []
            parked = threading.Thread(target=lambda: result.append(conn.execute("delete from scan_scratch").rowcount))
            parked.start()
            approval = wait_pending(gw, "delete from scan_scratch")
            assert gw.call(service(gw).vote(approval.id, DBA, "approve")).approval.status is Status.APPROVED
            parked.join(20)
            assert result == [2]
        # A refused login is a client-visible error too.
        try:
            psycopg.connect(gw.dsn("vault_demo", token="jgt_" + "0" * 43), connect_timeout=5).close()
        except psycopg.OperationalError as exc:
            seen.append(str(exc))
        deadline = time.monotonic() + 10
        while gw.server.active_sessions and time.monotonic() < deadline:
            time.sleep(0.1)
        gw.flush()
        api_texts = _api_texts(gw)

    store_file = Path(gw.settings.store_url.get_secret_value().split("///", 1)[1])
    stored = b"".join(p.read_bytes() for p in store_file.parent.glob(store_file.name + "*"))
    haystacks = {"client": "\n".join(seen), "logs": repr(logs), "api": "\n".join(api_texts)}
    secrets = {
        "upstream rw password": demo_roles.rw_password,
        "upstream superuser password": upstream.superuser_password,
        "upstream md5 password": upstream.md5user_password,
        "dynamic role password": dyn_passwords[0],
        "dynamic role name": dyn_user,
        "gateway token": token,
        "API token": API_TOKEN,
        "Slack bot token": slack.bot_token,
        "Slack signing secret": SIGNING_SECRET,
    }
    assert len(logs) > 5 and "approval_vote" in repr(logs)  # the scan saw real output
    for name, secret in secrets.items():
        assert secret, name
        for where, text in haystacks.items():
            assert secret not in text, f"the {name} reached the {where}"
        assert secret.encode() not in stored, f"the {name} reached the store"
