"""Offline signing of bundles: Ed25519 keys (`cryptography`) and DSSE envelopes.

The signed statement is the bundle manifest (canonical JSON: sorted keys, no spaces) carried as the
payload of a DSSE envelope (the in-toto / sigstore signature wrapper: the signature covers
`DSSEv1 <len> <type> <len> <payload>`, so a payload cannot be reinterpreted as another type).
The private key never leaves the build side; the isolated host holds only the `.pub` file.

A key id is the sha256 (hex) of the raw 32-byte public key: what an operator reads out over the
phone to compare the key a site was given with the one `appliance keys new` printed (refusals name
its first 16 digits).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from appliance.errors import SigningError

PAYLOAD_TYPE = "application/vnd.ocr-appliance.bundle-manifest+json"


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def public_path(private: Path) -> Path:
    return private.with_name(private.name + ".pub")


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path
    key_id: str


def new_key(path: Path, *, force: bool = False) -> KeyPair:
    """PEM private key (mode 0600, created so no other user can ever read it) and PATH.pub next to it."""
    pub = public_path(path)
    if not force and (path.exists() or pub.exists()):
        raise SigningError(f"{path}: a key exists already (keep it; or pass --force to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = private.public_key()
    pub.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return KeyPair(path, pub, key_id(public))


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SigningError(f"{path}: not a readable PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """A `.pub` file, or the private key itself (its public half)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningError(f"{path}: {exc.strerror}") from None
    if b"PRIVATE KEY" in data:
        return load_private(path).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise SigningError(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path}: not an Ed25519 public key")
    return key


def sign(statement: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope over the canonical statement (deterministic: Ed25519 has no random nonce)."""
    payload = canonical(statement)
    signature = private.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(private.public_key()), "sig": base64.b64encode(signature).decode()}],
    }


def open_envelope(envelope: dict[str, Any], public: Ed25519PublicKey) -> dict[str, Any]:
    """The statement of an envelope, once a signature by this key checks; SigningError says which part failed."""
    want = key_id(public)
    try:
        payload_type = envelope["payloadType"]
        payload = base64.b64decode(envelope["payload"], validate=True)
        signatures = [(s["keyid"], base64.b64decode(s["sig"], validate=True)) for s in envelope["signatures"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise SigningError(f"malformed signature envelope ({type(exc).__name__}: {exc})") from None
    if payload_type != PAYLOAD_TYPE:
        raise SigningError(f"envelope carries {payload_type!r}, not a bundle manifest")
    mine = [sig for kid, sig in signatures if kid == want]
    if not mine:
        others = ", ".join(kid[:16] for kid, _ in signatures) or "none"
        raise SigningError(f"signed by key {others}, not by the trusted key {want[:16]} (wrong key)")
    for signature in mine:
        try:
            public.verify(signature, pae(payload_type, payload))
        except InvalidSignature:
            continue
        return json.loads(payload)
    raise SigningError(f"the signature by key {want[:16]} does not match the manifest (altered after signing)")
