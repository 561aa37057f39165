"""TLS towards the client: sslmode=require and verify-full work; plaintext from another host is refused."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from broker.config import ProxySettings
from tests.e2e.conftest import Gateway, start_gateway, stop_gateway

pytestmark = pytest.mark.e2e


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def _external_address() -> str | None:
    """An address of this host that is not loopback (to look like another host)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent for UDP connect
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if ipaddress.ip_address(addr).is_loopback else addr


@pytest.fixture(scope="module")
def tls_gateway(upstream, demo_roles) -> Iterator[tuple[Gateway, Path]]:
    with tempfile.TemporaryDirectory(prefix="jitgate-tls-") as tmp:
        cert, key = _self_signed(Path(tmp))
        gw = start_gateway(
            upstream, demo_roles, Path(tmp) / "gw",
            proxy=ProxySettings(listen_host="0.0.0.0", listen_port=0, tls_cert_file=cert, tls_key_file=key),
        )
        try:
            yield gw, cert
        finally:
            stop_gateway(gw)


def test_sslmode_require(tls_gateway):
    gw, _ = tls_gateway
    with psycopg.connect(gw.dsn(sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select count(*) from customers").fetchone()[0] == 200


def test_sslmode_verify_full(tls_gateway):
    gw, cert = tls_gateway
    dsn = gw.dsn(sslmode="verify-full", sslrootcert=str(cert)).replace("127.0.0.1", "localhost")
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert "***" in conn.execute("select email from customers where id = 1").fetchone()[0]


def test_plaintext_from_another_host_is_refused(tls_gateway):
    gw, _ = tls_gateway
    addr = _external_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback address")
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(gw.dsn(sslmode="disable").replace("127.0.0.1", addr), connect_timeout=10)
    assert "requires TLS" in str(err.value)
    with psycopg.connect(gw.dsn(sslmode="require").replace("127.0.0.1", addr)) as conn:
        assert conn.execute("select 1").fetchone()[0] == 1
