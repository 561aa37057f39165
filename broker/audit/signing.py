"""Signed checkpoints: an Ed25519 signature over a position in the chain.

A checkpoint is an ordinary audit record (`audit.checkpoint`) whose data signs its own
predecessor: `sign(b"jitgate-audit-checkpoint/v1:" + seq + ":" + hash)`. Anyone holding
the store can recompute every hash after an edit, but not these signatures: verification
with the public key then finds the rewritten part at the first checkpoint after it.

Keys are PEM files (PKCS#8 private, SubjectPublicKeyInfo public); `key_id` is the first
16 hex digits of the SHA-256 of the raw public key, so a verifier can tell which key
signed when keys are rotated.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.events import AuditEvent

CHECKPOINT = "audit.checkpoint"


def _message(seq: int, hash_: str) -> bytes:
    return f"jitgate-audit-checkpoint/v1:{seq}:{hash_}".encode()


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def new_private_key(path: Path) -> Ed25519PrivateKey:
    """Make a key and write it to `path` (PKCS#8 PEM), created 0600; never over an existing file
    (FileExistsError)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """A public key file, or the public half of a private key file."""
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def checkpoint_event(key: Ed25519PrivateKey, *, seq: int, hash_: str) -> AuditEvent:
    """The checkpoint record to append right after record `seq` whose hash is `hash_`."""
    signature = key.sign(_message(seq, hash_))
    return AuditEvent(
        CHECKPOINT,
        None,
        None,
        {
            "signs_seq": seq,
            "signs_hash": hash_,
            "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(signature).decode(),
        },
    )


class CheckpointVerifier:
    """Checks checkpoint records' signatures with the given public keys (by key id)."""

    def __init__(self, keys: list[Ed25519PublicKey]) -> None:
        self._keys = {key_id(k): k for k in keys}

    def check(self, *, seq: int, prev_hash: str, data: dict[str, object]) -> str | None:
        """None if the checkpoint at `seq` holds; otherwise why not."""
        if data.get("signs_seq") != seq - 1 or data.get("signs_hash") != prev_hash:
            return "checkpoint does not sign its predecessor"
        key = self._keys.get(str(data.get("key_id")))
        if key is None:
            return f"checkpoint signed by unknown key {data.get('key_id')}"
        try:
            key.verify(base64.b64decode(str(data.get("signature"))), _message(seq - 1, prev_hash))
        except (InvalidSignature, ValueError):
            return "checkpoint signature is not valid"
        return None


def public_key_files(signing_key_file: Path | None, verify_key_files: Sequence[Path]) -> list[Path]:
    """The key files to verify with: `audit.verify_key_files`, else the signing key (whose
    public half is read from it); empty when neither is configured."""
    return list(verify_key_files) or ([signing_key_file] if signing_key_file else [])


def verifier_for(signing_key_file: Path | None, verify_key_files: Sequence[Path]) -> CheckpointVerifier | None:
    """The checkpoint verifier for the configured keys, or None when none are configured."""
    paths = public_key_files(signing_key_file, verify_key_files)
    if not paths:
        return None
    return CheckpointVerifier([load_public_key(p) for p in paths])
