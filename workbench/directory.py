"""A consortium's signed directory of member nodes: who is in, where they are, which keys are theirs.

The directory is a compact JWS (EdDSA, ``typ`` ``workbench-directory+jwt``)
whose payload lists the consortium's members (name, node URL, signing keys,
DCAT catalogue URL), when it was issued and when it stops being valid. The
consortium signs it with its own Ed25519 key (``workbench directory sign``);
readers verify it against that key's public JWK, obtained out of band (the
consortium agreement, a website you trust): :func:`verify` refuses another
key, another algorithm, a tampered payload, and an expired directory.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import InvalidQuery, NotAuthenticated
from .node.dpop import jwk_thumbprint

TYPE = "workbench-directory+jwt"


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    url: str = Field(pattern=r"^https?://")
    catalogue_url: str = Field(pattern=r"^https?://")
    signing_keys: list[dict[str, Any]] = Field(default_factory=list)


class Directory(BaseModel):
    model_config = ConfigDict(extra="ignore")  # later directory formats may add fields; members stay strict

    consortium: str
    issued_at: datetime
    expires_at: datetime
    members: list[Member]

    def member(self, name: str) -> Member:
        for m in self.members:
            if m.name == name:
                return m
        raise InvalidQuery(f"{name!r} is not a member of {self.consortium} ({[m.name for m in self.members]}).",
                           code="not_found")


def public_jwk(key: Ed25519PrivateKey | Ed25519PublicKey) -> dict[str, Any]:
    """The public JWK (with its thumbprint as ``kid``) that readers pin."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": jwk_thumbprint(jwk), "alg": "EdDSA", "use": "sig"}


def load_or_create_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """The consortium's private key (PEM, created 0600 if missing)."""
    path = Path(path)
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidQuery(f"{path} is not an Ed25519 private key.", code="invalid_query")
        return key
    key = Ed25519PrivateKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return key


def sign(consortium: str, members: list[Member], key: Ed25519PrivateKey, valid_days: float = 90.0) -> str:
    """The signed directory (compact JWS)."""
    now = datetime.now(timezone.utc)
    payload = {"consortium": consortium, "issued_at": now.isoformat(),
               "expires_at": (now + timedelta(days=valid_days)).isoformat(),
               "members": [m.model_dump() for m in members]}
    return jwt.api_jws.encode(json.dumps(payload, sort_keys=True).encode(), key, algorithm="EdDSA",
                              headers={"typ": TYPE, "kid": public_jwk(key)["kid"]})


def verify(token: str, trusted_jwk: dict[str, Any], now: datetime | None = None) -> Directory:
    """The directory, if ``token`` is signed by the consortium key ``trusted_jwk`` and still valid; else 401."""
    def refused(reason: str, message: str) -> NotAuthenticated:
        return NotAuthenticated(message, code="directory_untrusted", details={"reason": reason})

    try:
        header = jwt.get_unverified_header(token)
        key = jwt.PyJWK(trusted_jwk, algorithm="EdDSA")
    except (jwt.PyJWTError, jwt.PyJWKError, ValueError, TypeError) as exc:
        raise refused("malformed", f"The directory or the trusted key is not valid: {exc}.") from None
    if header.get("alg") != "EdDSA" or header.get("typ") != TYPE:
        raise refused("algorithm", f"A directory is an EdDSA-signed {TYPE}, not {header.get('alg')!r}.")
    try:
        payload = jwt.api_jws.decode(token, key.key, algorithms=["EdDSA"])
        directory = Directory.model_validate_json(payload)
    except jwt.InvalidSignatureError:
        raise refused("signature", "The directory is not signed by the consortium key you trust.") from None
    except (jwt.PyJWTError, ValidationError, ValueError) as exc:
        raise refused("malformed", f"The directory is not valid: {str(exc)[:300]}.") from None
    if (now or datetime.now(timezone.utc)) > directory.expires_at:
        raise refused("expired", f"The directory expired on {directory.expires_at.isoformat()}; fetch a new one.")
    return directory
