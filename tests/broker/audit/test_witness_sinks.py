"""Witness entries and their witnesses: a line cannot be forged or edited without the key;
the file is appended to; a webhook that fails gets the entry on the next run; the SIEM sink
gets it through the forwarder's transport."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

import httpx
import pytest
import structlog.testing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.forward import WebhookTransport
from broker.audit.witness import WITNESSED, WitnessCache, WitnessEntry, WitnessError, read_entries, sign_entry
from broker.audit.witnessing import FileWitness, SinkWitness, WebhookWitness, build_setup, deliver
from broker.config import Settings

KEY = Ed25519PrivateKey.generate()


def entry(seq: int, kind: str = "checkpoint") -> WitnessEntry:
    archive = None
    if kind == "prune":
        archive = {"from_seq": 1, "through_seq": seq, "through_hash": "ab" * 32, "sha256": "cd" * 32}
    return sign_entry(KEY, kind=kind, seq=seq, id=f"id-{seq}", hash_="ab" * 32, archive=archive)  # type: ignore[arg-type]


def test_entries_verify_and_an_edited_or_forged_line_does_not() -> None:
    good = entry(5).line()
    assert read_entries([good], [KEY.public_key()]).last_seq == 5
    edited = json.loads(good)
    edited["seq"] = 4
    with pytest.raises(WitnessError, match="line 2 .*signature is not valid"):
        read_entries([good, json.dumps(edited)], [KEY.public_key()])
    other = Ed25519PrivateKey.generate()
    forged = sign_entry(other, kind="checkpoint", seq=9, id="x", hash_="ef" * 32).line()
    with pytest.raises(WitnessError, match="unknown key"):
        read_entries([good, forged], [KEY.public_key()])
    with pytest.raises(WitnessError, match="line 1 is not a witness entry"):
        read_entries(["{not json"], [KEY.public_key()])
    # The signature covers the message under the witness's own domain, not a checkpoint's.
    assert entry(5).message().startswith(b"jitgate-audit-witness/v1:")


async def test_file_witness_appends_and_skips_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "w" / "audit.jsonl"
    witness = FileWitness(path)
    assert await deliver([witness], entry(3), state_dir=tmp_path / "s") == {"file": "written"}
    assert await deliver([witness], entry(3), state_dir=tmp_path / "s") == {"file": "already"}
    assert await deliver([witness], entry(3, "prune"), state_dir=tmp_path / "s") == {"file": "written"}
    assert await deliver([witness], entry(7), state_dir=tmp_path / "s") == {"file": "written"}
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [3, 3, 7]
    assert path.stat().st_mode & 0o777 == 0o640


async def test_webhook_failure_is_retried_next_run_without_logging_its_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    received: list[tuple[dict[str, object], str]] = []
    fail = {"on": True}

    def handler(request: httpx.Request) -> httpx.Response:
        if fail["on"]:
            return httpx.Response(503)
        received.append((json.loads(request.content), request.headers["authorization"]))
        return httpx.Response(204)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    witness = WebhookWitness("https://witness.example/entries", headers={"authorization": "Bearer s3cret-w"},
                             client=client)
    state = tmp_path / "state"
    caplog.set_level(logging.DEBUG)
    failed = WITNESSED.labels("webhook", "failed")._value.get()
    with structlog.testing.capture_logs() as logged:
        assert await deliver([witness], entry(4), state_dir=state) == {"webhook": "failed"}
    assert [e["event"] for e in logged] == ["audit_witness_failed"] and "s3cret-w" not in repr(logged)
    assert WITNESSED.labels("webhook", "failed")._value.get() == failed + 1
    assert (state / "witness-webhook.outbox.jsonl").read_text().count("\n") == 1
    fail["on"] = False
    assert await deliver([witness], entry(9), state_dir=state) == {"webhook": "written"}
    assert [(body["seq"], auth) for body, auth in received] == [(4, "Bearer s3cret-w"), (9, "Bearer s3cret-w")]
    assert (state / "witness-webhook.outbox.jsonl").read_text() == ""
    assert await deliver([witness], entry(9), state_dir=state) == {"webhook": "already"}
    assert "s3cret-w" not in caplog.text
    # The receiver's copy is the file's format: what verify --witness reads.
    assert read_entries([json.dumps(body) for body, _ in received], [KEY.public_key()]).last_seq == 9
    await client.aclose()


async def test_siem_sink_gets_the_entry_through_the_forwarders_transport(tmp_path: Path) -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    witness = SinkWitness(WebhookTransport("https://siem.example/hec", client=client))
    assert await deliver([witness], entry(12), state_dir=tmp_path) == {"sink": "written"}
    ((item,),) = bodies  # type: ignore[misc]
    assert item["type"] == "audit.witness" and item["witness"]["seq"] == 12
    assert read_entries([json.dumps(item["witness"])], [KEY.public_key()]).last_seq == 12
    await client.aclose()


async def test_the_configured_siem_sink_takes_entries_through_the_forwarders_transport(tmp_path: Path) -> None:
    """`build_setup` with `audit.witness.to_sink` and a syslog sink: the entry reaches a real UDP
    receiver as the forwarder would send it (`forward.transport_for`)."""
    (tmp_path / "audit.pem").write_bytes(KEY.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        settings = Settings.model_validate({"data_dir": str(tmp_path), "audit": {
            "signing_key_file": str(tmp_path / "audit.pem"), "witness": {"to_sink": True},
            "sink": {"kind": "syslog", "address": f"127.0.0.1:{receiver.getsockname()[1]}", "facility": "local3"},
        }})
        setup = build_setup(settings)
        try:
            assert await deliver(setup.witnesses, entry(5), state_dir=setup.state_dir) == {"sink": "written"}
        finally:
            await setup.aclose()
        datagram = receiver.recv(65536).decode()
    assert datagram.startswith(f"<{19 * 8 + 6}>1 ")  # local3, info
    item = json.loads(datagram.split(" audit.witness - ", 1)[1])
    assert read_entries([json.dumps(item["witness"])], [KEY.public_key()]).last_seq == 5


def test_the_witness_cache_verifies_appended_lines_only_and_notices_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text(entry(3).line() + entry(7).line())
    cache = WitnessCache()
    assert cache.read(path, [KEY.public_key()]).last_seq == 7 and cache.verified == 2
    # A line not finished yet is verified, but not kept as verified: it may still change.
    with path.open("a") as f:
        f.write(entry(9).line().rstrip("\n"))
    assert cache.read(path, [KEY.public_key()]).last_seq == 9 and cache.verified == 3
    with path.open("a") as f:
        f.write("\n")
    assert cache.read(path, [KEY.public_key()]).last_seq == 9 and cache.verified == 4
    assert cache.findings(path) == []
    # Two lines swapped: the same size, every signature still good, but not what was verified.
    first, second, third = path.read_text().splitlines(keepends=True)
    path.write_text(second + first + third)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a coarse clock could hide the write
    assert [e.seq for e in cache.read(path, [KEY.public_key()]).entries] == [7, 3, 9]
    assert cache.verified == 7  # read whole again
    assert cache.findings(path) == [
        f"the first {len(first + second + third)} bytes of the witness audit.jsonl changed since it was last read: "
        "entries of an append-only witness were rewritten"
    ]
