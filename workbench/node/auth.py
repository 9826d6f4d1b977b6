"""Node-issued identity: signed bearer tokens (JWT, EdDSA) for users the owner adds.

The signing key lives in the node's state folder (mode 0600). A token names
its user and role and a ``ver`` the owner can bump to revoke every token of
that user. Only ``EdDSA`` is accepted, with this node's issuer and audience,
an expiry, and a user that still exists: ``alg=none``, HS256 confusion,
forged, expired and foreign tokens all get 401.

With an ``[oidc]`` table in the config, a token whose (unverified) ``iss`` is
that issuer goes to :class:`workbench.node.oidc.OIDCVerifier` instead; every
other token is checked as one of this node's own.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import NotAuthenticated, NotAuthorized
from .oidc import OIDCSection, OIDCVerifier
from .store import Store, User

ROLES = ("owner", "analyst", "auditor")
ALGORITHM = "EdDSA"


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    token_id: str = ""
    purposes: tuple[str, ...] | None = None  # None: unrestricted; else the purposes this caller may name
    issuer: str | None = None  # set for callers authenticated by an external OIDC issuer

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise NotAuthorized(f"This needs the role {' or '.join(roles)}; you are {self.role}.",
                                code="not_authorized")


def load_or_create_key(state_dir: Path) -> Ed25519PrivateKey:
    path = state_dir / "signing_key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, Ed25519PrivateKey)
        return key
    state_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


class TokenAuthority:
    def __init__(self, node_name: str, state_dir: Path, store: Store, ttl_days: float = 90.0,
                 oidc: OIDCSection | None = None):
        self.issuer = f"workbench-node:{node_name}"
        self.audience = f"workbench:{node_name}"
        self._key = load_or_create_key(state_dir)
        self._public = self._key.public_key()
        self._store = store
        self._ttl = ttl_days * 86400
        self.oidc = OIDCVerifier(oidc, store) if oidc is not None else None

    def issue(self, user: User, ttl_s: float | None = None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user.name,
            "role": user.role,
            "ver": user.token_version,
            "iat": now,
            "exp": now + int(ttl_s if ttl_s is not None else self._ttl),
            "jti": secrets.token_hex(12),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        if self.oidc is not None and self.oidc.handles(token):
            who = self.oidc.verify(token)
            return Principal(name=who.name, role=who.role, token_id=who.token_id, purposes=who.purposes,
                             issuer=who.issuer)
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise NotAuthenticated("Your token has expired; ask the node's owner for a new one.",
                                   code="not_authenticated") from None
        except jwt.PyJWTError:
            raise NotAuthenticated("The token is not valid for this node.", code="not_authenticated") from None
        with self._store.transaction("read") as session:
            user = session.query(User).filter_by(name=claims["sub"]).one_or_none()
            if user is None or user.disabled or user.token_version != claims.get("ver"):
                raise NotAuthenticated("The token has been revoked.", code="not_authenticated")
            return Principal(name=user.name, role=user.role, token_id=claims["jti"])
