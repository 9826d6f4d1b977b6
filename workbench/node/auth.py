"""Node-issued identity: signed bearer tokens (JWT, EdDSA) for users the owner adds.

The signing key lives in the node's state folder (mode 0600). A token names
its user and role and a ``ver`` the owner can bump to revoke every token of
that user. Only ``EdDSA`` is accepted, with this node's issuer and audience,
an expiry, and a user that still exists: ``alg=none``, HS256 confusion,
forged, expired and foreign tokens all get 401.

With an ``[oidc]`` table in the config, a token whose (unverified) ``iss`` is
that issuer goes to :class:`workbench.node.oidc.OIDCVerifier` instead; every
other token is checked as one of this node's own.

A verified node token is remembered for up to ``USER_RECHECK_S`` seconds (never
past its expiry): a change to any user made through this node process takes
effect at once; a change made by another process sharing the database (the
owner's CLI) takes effect within ``USER_RECHECK_S``. :meth:`TokenAuthority.remembered`
hands out only tokens that need no DPoP proof (unbound, and the node does not
require binding): the DP replay fast path serves only those. Bound tokens are
:meth:`TokenAuthority.recalled` instead, and the routes check their proof on
every request (:mod:`workbench.node.dpop`).
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import NotAuthenticated, NotAuthorized
from .dpop import ProofChecker, bound_key, check_sender
from .oidc import OIDCSection, OIDCVerifier
from .store import Store, User, users_generation

ROLES = ("owner", "analyst", "auditor")
ALGORITHM = "EdDSA"
USER_RECHECK_S = 2.0
_MAX_REMEMBERED = 10_000


@dataclass(frozen=True)
class Principal:
    name: str
    role: str
    token_id: str = ""
    purposes: tuple[str, ...] | None = None  # None: unrestricted; else the purposes this caller may name
    issuer: str | None = None  # set for callers authenticated by an external OIDC issuer
    jkt: str | None = None  # the DPoP key thumbprint the token is bound to (cnf.jkt), if any
    #: identity-provider claims (sharing agreements check them); None for the node's own users
    claims: Mapping[str, Any] | None = field(default=None, compare=False, hash=False)

    def require(self, *roles: str) -> None:
        if self.role not in roles:
            raise NotAuthorized(f"This needs the role {' or '.join(roles)}; you are {self.role}.",
                                code="not_authorized")


def bearer_token(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    found = credentials(header)
    return found[1] if found is not None and found[0] == "bearer" else None


def credentials(header: str) -> tuple[str, str] | None:
    """``("bearer" | "dpop", token)`` from an ``Authorization`` header value, or None."""
    scheme, _, token = header.partition(" ")
    token, scheme = token.strip(), scheme.lower()
    return (scheme, token) if scheme in ("bearer", "dpop") and token else None


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
                 oidc: OIDCSection | None = None, require_sender_constrained: bool = False):
        self.issuer = f"workbench-node:{node_name}"
        self.audience = f"workbench:{node_name}"
        self._key = load_or_create_key(state_dir)
        self._public = self._key.public_key()
        self._store = store
        self._ttl = ttl_days * 86400
        self.oidc = OIDCVerifier(oidc, store) if oidc is not None else None
        self.require_sender_constrained = require_sender_constrained
        self.proofs = ProofChecker()
        # token -> (principal, expiry (epoch s), checked at (monotonic s), users generation)
        self._verified: dict[str, tuple[Principal, float, float, int]] = {}

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The token-signing public key, published at ``/v1/jwks`` (a consortium directory lists it)."""
        return self._public

    def issue(self, user: User, ttl_s: float | None = None, jkt: str | None = None) -> str:
        """A signed token for ``user``; with ``jkt`` (a DPoP key thumbprint) it is bound to that key."""
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
            **({"cnf": {"jkt": jkt}} if jkt else {}),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM)

    def remembered(self, token: str) -> Principal | None:
        """The principal of a node token verified moments ago that needs no DPoP proof (else None).

        Only such tokens may be served without :meth:`check_sender` (the DP replay fast path does)."""
        principal = self.recalled(token)
        if principal is None or principal.jkt is not None or self.require_sender_constrained:
            return None
        return principal

    def recalled(self, token: str) -> Principal | None:
        """The principal of any node token verified moments ago, bound or not, without touching the database.

        The caller must still apply :meth:`check_sender` (its proof is checked on every request)."""
        hit = self._verified.get(token)
        if hit is None:
            return None
        principal, expires, checked, generation = hit
        if time.time() >= expires or time.monotonic() - checked > USER_RECHECK_S or generation != users_generation():
            return None
        return principal

    def verify(self, token: str) -> Principal:
        known = self.recalled(token)
        if known is not None:
            return known
        if self.oidc is not None and self.oidc.handles(token):
            who = self.oidc.verify(token)
            return Principal(name=who.name, role=who.role, token_id=who.token_id, purposes=who.purposes,
                             issuer=who.issuer, jkt=who.jkt, claims=who.claims)
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
        generation = users_generation()
        with self._store.transaction("read") as session:
            user = session.query(User).filter_by(name=claims["sub"]).one_or_none()
            if (user is None or user.disabled or user.token_version != claims.get("ver")
                    or user.role != claims.get("role")):
                raise NotAuthenticated("The token has been revoked.", code="not_authenticated")
            principal = Principal(name=user.name, role=user.role, token_id=claims["jti"], jkt=bound_key(claims))
        if len(self._verified) >= _MAX_REMEMBERED:
            self._verified.clear()
        self._verified[token] = (principal, float(claims["exp"]), time.monotonic(), generation)
        return principal

    def check_sender(self, principal: Principal, scheme: str, proof: str | None, method: str, url: str,
                     token: str) -> None:
        """The DPoP / sender-constraint rules of :mod:`workbench.node.dpop` for one authenticated request."""
        check_sender(self.proofs, bound_jkt=principal.jkt, scheme=scheme, proof=proof, method=method, url=url,
                     access_token=token, required=self.require_sender_constrained)
