"""Shares sealed to their receiving node: X25519 key agreement, HKDF-SHA256, ChaCha20-Poly1305.

Each node makes a fresh key pair for every session (nothing to store, nothing
to leak later). The key for the share from ``sender`` to ``recipient`` is
``HKDF(X25519(sk_sender, pk_recipient), info = session | sender | recipient)``;
the associated data binds the same names and the vector length, so a relay
cannot move a share to another session, pair or shape without the open
failing. The relay (the aggregator) sees only public keys and sealed bytes.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from workbench.errors import InvalidQuery

NONCE = 12


def new_key() -> tuple[X25519PrivateKey, str]:
    """A fresh key pair; the public half as base64 (32 bytes)."""
    sk = X25519PrivateKey.generate()
    raw = sk.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sk, base64.b64encode(raw).decode("ascii")


def _public(text: str) -> X25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        if len(raw) != 32:
            raise ValueError
        return X25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise InvalidQuery("A party's public key is malformed.", code="bad_ciphertext") from None


def _label(session_id: str, sender: str, recipient: str, length: int) -> bytes:
    return f"workbench-smpc-v1|{session_id}|{sender}|{recipient}|{length}".encode()


def _key(sk: X25519PrivateKey, peer: str, label: bytes) -> ChaCha20Poly1305:
    try:
        shared = sk.exchange(_public(peer))
    except ValueError:  # cryptography refuses low-order points (an all-zero shared secret)
        shared = bytes(32)
    if shared == bytes(32):
        raise InvalidQuery("A party's public key is a low-order point.", code="bad_ciphertext")
    return ChaCha20Poly1305(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(shared))


def seal(sk: X25519PrivateKey, recipient_key: str, session_id: str, sender: str, recipient: str,
         payload: bytes, length: int) -> str:
    label = _label(session_id, sender, recipient, length)
    nonce = os.urandom(NONCE)
    return base64.b64encode(nonce + _key(sk, recipient_key, label).encrypt(nonce, payload, label)).decode("ascii")


def open_sealed(sk: X25519PrivateKey, sender_key: str, session_id: str, sender: str, recipient: str,
                sealed: str, length: int) -> bytes:
    label = _label(session_id, sender, recipient, length)
    try:
        raw = base64.b64decode(sealed, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidQuery(f"The share from {sender!r} is not valid base64.", code="bad_ciphertext") from None
    if len(raw) <= NONCE:
        raise InvalidQuery(f"The share from {sender!r} is too short.", code="bad_ciphertext")
    try:
        return _key(sk, sender_key, label).decrypt(raw[:NONCE], raw[NONCE:], label)
    except InvalidTag:
        raise InvalidQuery(f"The share from {sender!r} does not open (tampered, or sealed for someone else).",
                           code="bad_ciphertext") from None
