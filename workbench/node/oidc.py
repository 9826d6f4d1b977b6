"""Trust an external OpenID Connect issuer: verify its JWT access tokens, map claims to a role and purposes.

A node configured with an ``[oidc]`` table accepts, besides its own tokens,
JWT access tokens (RFC 9068) from one issuer. The issuer's discovery document
(``/.well-known/openid-configuration``) names its ``jwks_uri``; both are
fetched with short timeouts and size caps. PyJWT's ``PyJWKClient`` caches
the key set (``jwks_cache_s``) and refetches once for a ``kid`` it does not
know (at most every ``jwks_refetch_min_s`` seconds), so the issuer can rotate
keys.

Refused with 401 (``not_authenticated``, ``details.reason`` says why): a
malformed token, an algorithm outside the configured asymmetric list (so
``alg=none`` and every HMAC algorithm, which is what an HS256-with-the-public-
key forgery needs), an unknown key id after the refetch, a bad signature, a
wrong issuer or audience, an expired or not-yet-valid token (``leeway_s``),
and missing claims. A valid token whose claims map to no role gets 403
``oidc_no_role``; one whose user name belongs to a local user or to another
issuer's subject gets 403 ``oidc_user_conflict`` (nobody takes over ``owner``
by naming themselves so at the identity provider).

A valid OIDC user gets a ``users`` row on first login (role from the claims,
updated when the claims change), linked to ``(issuer, sub)`` in
``oidc_users``, so the owner's grants (``workbench node grant NAME ...``)
work for them by name. Disabling the row locks them out whatever the
provider says.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import jwt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import DateTime, String, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from ..errors import NotAuthenticated, NotAuthorized
from . import audit
from .agreement import UserClaims, record_claims, recorded_claims
from .dpop import bound_key
from .store import Base, Store, User, first_token_version, utcnow

log = logging.getLogger(__name__)

Role = Literal["owner", "analyst", "auditor"]
#: Signature algorithms a node may be told to accept: asymmetric only, never ``none`` or HMAC.
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
MAX_DOCUMENT_BYTES = 512 * 1024
MAX_TOKEN_BYTES = 16 * 1024
USER_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
LOCAL_ISSUER_PREFIX = "workbench-node:"


class OIDCSection(BaseModel):
    """The optional ``[oidc]`` table of a node's config: which issuer to trust and how to map its claims."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(description="The issuer URL, exactly as in its tokens' `iss` and its discovery document.")
    audience: str = Field(min_length=1, description="The `aud` this node's access tokens must carry.")
    username_claim: str = "sub"
    username_prefix: str = ""
    roles_claim: str = "groups"
    role_map: dict[str, Role] = Field(default_factory=dict)
    default_role: Role | None = None
    role_priority: list[Role] = Field(default_factory=lambda: ["owner", "auditor", "analyst"])
    purpose_map: dict[str, list[str]] = Field(default_factory=dict)
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256", "PS256"], min_length=1)
    jwks_cache_s: float = Field(600.0, ge=0)
    jwks_refetch_min_s: float = Field(30.0, ge=0)
    leeway_s: float = Field(30.0, ge=0, le=300)
    http_timeout_s: float = Field(5.0, gt=0, le=60)
    allow_insecure_http: bool = False

    @field_validator("algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in ASYMMETRIC_ALGORITHMS]
        if bad:
            raise ValueError(f"algorithms {bad} are not accepted; choose from {list(ASYMMETRIC_ALGORITHMS)} "
                             "(never 'none' or an HMAC algorithm)")
        return value

    @model_validator(mode="after")
    def _check(self) -> "OIDCSection":
        if self.issuer.startswith(LOCAL_ISSUER_PREFIX):
            raise ValueError("the OIDC issuer must not look like a node's own issuer")
        _check_url(self.issuer, self.allow_insecure_http, "issuer")
        if self.username_prefix and not USER_NAME.match(self.username_prefix + "x"):
            raise ValueError("username_prefix may contain letters, digits, '.', '_', '@' and '-' only")
        return self


def _check_url(url: str, allow_http: bool, what: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"the {what} must be an https URL, not {url!r}")
    if parts.scheme == "http" and not allow_http and not _is_loopback(parts.hostname):
        raise ValueError(f"the {what} {url!r} uses plain http; use https (or allow_insecure_http for a lab setup)")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OIDCUser(Base):
    """Which issuer and subject own a ``users`` row created by an OIDC login."""

    __tablename__ = "oidc_users"
    user_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    first_login_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_role: Mapped[str] = mapped_column(String(16))


@dataclass(frozen=True)
class OIDCIdentity:
    """A verified OIDC caller, mapped onto this node."""

    name: str
    role: str
    purposes: tuple[str, ...] | None
    token_id: str
    issuer: str
    subject: str
    groups: tuple[str, ...]
    jkt: str | None = None  # cnf.jkt: the DPoP key this token is bound to
    claims: dict[str, Any] = field(default_factory=dict)  # the descriptive claims (for sharing agreements)


def _refused(reason: str, message: str) -> NotAuthenticated:
    return NotAuthenticated(message, code="not_authenticated", details={"reason": reason})


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` a token claims, read without checking anything (routing only), or None."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss")
    return iss if isinstance(iss, str) else None


#: Claims about the token, not about its holder: never kept for sharing-agreement checks.
TOKEN_CLAIMS = frozenset({"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "cnf", "client_id", "scope", "auth_time",
                          "acr", "amr", "azp", "sid", "nonce", "at_hash", "typ"})


def descriptive_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims that describe who the holder is (strings or lists of strings: country, organisation, groups)."""
    out: dict[str, Any] = {}
    for name, value in claims.items():
        if name in TOKEN_CLAIMS:
            continue
        if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            out[name] = value
    return out


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """A claim by name, or by dotted path into nested objects (``realm_access.roles``)."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _as_groups(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


class KeySet:
    """The issuer's signing keys: PyJWT's :class:`jwt.PyJWKClient` (key-set cache, one rate-limited refetch
    for an unknown ``kid``) fed by our own discovery and a size-capped, redirect-free fetch."""

    def __init__(self, section: OIDCSection, http: httpx.Client | None = None):
        self.section = section
        self._http = http or httpx.Client(timeout=httpx.Timeout(section.http_timeout_s), follow_redirects=False)
        self.client = _CappedJWKClient(self)
        self._last_good: dict | None = None
        self._failed_at: float | None = None
        self._declared: dict[str, object] = {}  # kid -> the `alg` its JWK declares (if any)
        self.fetches = 0

    def _get_json(self, url: str, what: str) -> dict:
        _check_url(url, self.section.allow_insecure_http, what)
        with self._http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise ValueError(f"{what} {url} answered HTTP {response.status_code}")
            body = bytearray()
            for chunk in response.iter_bytes():
                body.extend(chunk)
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"{what} {url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError(f"{what} {url} is not a JSON object")
        return doc

    def fetch(self) -> dict:
        """Discovery, then the key set, keeping only public signing keys; the last good set if this fails."""
        s = self.section
        if self._last_good is None and self._failed_at is not None \
                and time.monotonic() - self._failed_at < s.jwks_refetch_min_s:
            raise _refused("provider_unreachable", f"The node has no signing keys of {s.issuer} yet (retrying at "
                                                   f"most every {s.jwks_refetch_min_s:g} s).")
        try:
            keys = self._download()
        except (httpx.HTTPError, ValueError) as exc:
            self._failed_at = time.monotonic()
            if self._last_good is not None:
                log.warning("OIDC: cannot refresh keys of %s (keeping cached keys): %s", s.issuer, exc)
                return self._last_good
            raise _refused("provider_unreachable", f"The node cannot fetch the signing keys of {s.issuer}: {exc}") \
                from None
        self._last_good, self._failed_at = keys, None
        self._declared = {k["kid"]: k.get("alg") for k in keys["keys"]}
        self.fetches += 1
        return keys

    def _download(self) -> dict:
        issuer = self.section.issuer
        discovery = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
        if discovery.get("issuer") != issuer:
            raise ValueError(f"the discovery document names issuer {discovery.get('issuer')!r}, not {issuer!r}")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        raw_keys = self._get_json(jwks_uri, "JWKS").get("keys") or []
        usable = [k for k in raw_keys if _usable_public_signing_key(k)]
        if not usable:
            raise ValueError(f"the JWKS at {jwks_uri} holds no usable signing key")
        return {"keys": usable}

    def key_for(self, kid: str | None) -> tuple[jwt.PyJWK, str | None]:
        """The verification key (and the algorithm its JWK declares, if any) for a token's ``kid``."""
        if kid is None:
            keys = self.client.get_signing_keys()
            if len(keys) != 1:
                raise _refused("unknown_kid", f"The token names no key id and {self.section.issuer} has "
                                              f"{len(keys)} keys.")
            key = keys[0]
        else:
            try:
                key = self.client.get_signing_key(kid)
            except jwt.PyJWKClientError:
                raise _refused("unknown_kid", f"The token's key id {kid!r} is not among {self.section.issuer}'s "
                                              "keys.") from None
        declared = self._declared.get(key.key_id)
        return key, declared if isinstance(declared, str) else None


def _usable_public_signing_key(raw: object) -> bool:
    """A JWK we may verify with: a dict, for signing, not symmetric, and no private part published by mistake."""
    if not isinstance(raw, dict) or raw.get("use", "sig") != "sig" or raw.get("kty") == "oct":
        return False
    if any(k in raw for k in ("d", "p", "q")) or not isinstance(raw.get("kid"), str):
        return False
    try:
        jwt.PyJWK(raw)
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
        return False
    return True


class _CappedJWKClient(jwt.PyJWKClient):
    """PyJWKClient whose network fetch is :meth:`KeySet.fetch` (discovery, size cap, no redirects)."""

    def __init__(self, keys: "KeySet"):
        s = keys.section
        super().__init__(keys.section.issuer, cache_keys=False, cache_jwk_set=True,
                         lifespan=max(s.jwks_cache_s, 1e-6), timeout=s.http_timeout_s,
                         cooldown_duration=s.jwks_refetch_min_s)
        self._keys = keys

    def fetch_data(self) -> dict:
        data = self._keys.fetch()
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(data)
        self._last_successful_fetch = time.monotonic()
        return data


class OIDCVerifier:
    """Verifies one issuer's JWT access tokens and maps them onto users of this node."""

    def __init__(self, section: OIDCSection, store: Store, http: httpx.Client | None = None):
        self.section = section
        self.keys = KeySet(section, http)
        self._store = store
        OIDCUser.__table__.create(store.engine, checkfirst=True)
        UserClaims.__table__.create(store.engine, checkfirst=True)

    def handles(self, token: str) -> bool:
        """True if the token claims to come from the configured issuer (checked for real by :meth:`verify`)."""
        return len(token) <= MAX_TOKEN_BYTES and unverified_issuer(token) == self.section.issuer

    def verify(self, token: str) -> OIDCIdentity:
        s = self.section
        if len(token) > MAX_TOKEN_BYTES:
            raise _refused("malformed", "The token is too large.")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _refused("malformed", "The token is not a JWT.") from None
        alg = header.get("alg")
        if alg not in s.algorithms:
            raise _refused("algorithm", f"Tokens signed with {alg!r} are not accepted (allowed: {s.algorithms}).")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refused("malformed", "The token's key id is not a string.")
        key, declared_alg = self.keys.key_for(kid)
        if declared_alg is not None and declared_alg != alg:
            raise _refused("algorithm", f"The key {kid!r} is for {declared_alg}, not {alg}.")
        try:
            claims = jwt.decode(
                token, key.key, algorithms=[alg], audience=s.audience, issuer=s.issuer, leeway=s.leeway_s,
                options={"require": ["exp", "iat", "iss", "aud", "sub"], "verify_nbf": True, "verify_iat": True},
            )
        except jwt.ExpiredSignatureError:
            raise _refused("expired", "Your identity provider's token has expired; log in again.") from None
        except jwt.ImmatureSignatureError:
            raise _refused("not_yet_valid", "The token is not valid yet (check the clocks).") from None
        except jwt.InvalidAudienceError:
            raise _refused("audience", f"The token is not meant for this node (audience must be {s.audience!r}).") \
                from None
        except jwt.InvalidIssuerError:
            raise _refused("issuer", f"The token is not from {s.issuer}.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _refused("claims", f"The token lacks the claim {exc.claim!r}.") from None
        except jwt.InvalidSignatureError:
            raise _refused("signature", "The token's signature does not verify.") from None
        except jwt.PyJWTError as exc:
            raise _refused("malformed", f"The token is not valid: {exc}.") from None
        return self._identity(claims)

    def _identity(self, claims: dict[str, Any]) -> OIDCIdentity:
        s = self.section
        raw_name = claim_at(claims, s.username_claim)
        if not isinstance(raw_name, str) or not raw_name:
            raise _refused("claims", f"The token lacks the user name claim {s.username_claim!r}.")
        name = s.username_prefix + raw_name
        if not USER_NAME.match(name):
            raise _refused("claims", f"The user name {name!r} (claim {s.username_claim!r}) is not 1-64 letters, "
                                     "digits, '.', '_', '@' or '-'; the owner can pick another username_claim.")
        groups = _as_groups(claim_at(claims, s.roles_claim))
        role = self.role_for(groups)
        subject = str(claims["sub"])
        token_id = claims.get("jti") if isinstance(claims.get("jti"), str) else f"oidc:{subject}:{claims['iat']}"
        if role is None:
            self._audit_refusal(name, "oidc_no_role", groups=list(groups))
            raise NotAuthorized(f"Your identity provider's groups {list(groups)} give you no role on this node; ask "
                                "the node's owner to map one of them ([oidc] role_map).", code="oidc_no_role",
                                details={"groups": list(groups)})
        identity = OIDCIdentity(name=name, role=role, purposes=self.purposes_for(groups), token_id=token_id,
                                issuer=s.issuer, subject=subject, groups=groups, jkt=bound_key(claims),
                                claims=descriptive_claims(claims))
        self._sync_user(identity)
        return identity

    def role_for(self, groups: tuple[str, ...]) -> str | None:
        """The role the groups map to (by ``role_priority`` when several do), else ``default_role``."""
        roles = {self.section.role_map[g] for g in groups if g in self.section.role_map}
        for role in self.section.role_priority:
            if role in roles:
                return role
        if roles:  # a mapped role missing from role_priority
            return sorted(roles)[0]
        return self.section.default_role

    def purposes_for(self, groups: tuple[str, ...]) -> tuple[str, ...] | None:
        """The purposes the groups allow: None (unrestricted) without a purpose_map or with a ``"*"`` entry."""
        if not self.section.purpose_map:
            return None
        allowed: list[str] = []
        for group in groups:
            for purpose in self.section.purpose_map.get(group, []):
                if purpose == "*":
                    return None
                if purpose not in allowed:
                    allowed.append(purpose)
        return tuple(allowed)

    def _audit_refusal(self, name: str, code: str, **details: Any) -> None:
        with self._store.transaction("light") as session:
            audit.append(session, name, "auth_refused", None, code=code, issuer=self.section.issuer, **details)

    def _sync_user(self, identity: OIDCIdentity) -> None:
        """Create or update the user's row; refuse names that belong to someone else."""
        try:
            self._sync_user_once(identity)
        except IntegrityError:  # another process created the same row first (PostgreSQL): read it again
            self._sync_user_once(identity)

    def _sync_user_once(self, identity: OIDCIdentity) -> None:
        with self._store.transaction("read") as session:
            user = session.execute(select(User).where(User.name == identity.name)).scalar_one_or_none()
            link = session.get(OIDCUser, identity.name)
            state = None if user is None else (user.role, user.disabled)
            link_owner = None if link is None else (link.issuer, link.subject)
            same_claims = recorded_claims(session, identity.name) == identity.claims
        if state is not None and link_owner == (identity.issuer, identity.subject):
            if state[1]:
                raise _refused("disabled", "Your account on this node has been disabled by its owner.")
            if state[0] == identity.role and same_claims:
                return  # the common case: nothing to write
        with self._store.transaction() as session:
            user = session.execute(select(User).where(User.name == identity.name)).scalar_one_or_none()
            link = session.get(OIDCUser, identity.name)
            if user is not None and (link is None or (link.issuer, link.subject) != (identity.issuer,
                                                                                       identity.subject)):
                conflict = True
            else:
                conflict = False
            if not conflict:
                record_claims(session, identity.name, identity.claims)
                if user is None:
                    user = User(name=identity.name, role=identity.role,
                                token_version=first_token_version(session, identity.name))
                    session.add(user)
                    if link is None:
                        session.add(OIDCUser(user_name=identity.name, issuer=identity.issuer,
                                             subject=identity.subject, last_role=identity.role))
                    else:  # a link left by a deleted user row: same issuer and subject, reuse it
                        link.last_role = identity.role
                    audit.append(session, f"oidc:{identity.name}", "user_add", None, user=identity.name,
                                 role=identity.role, issuer=identity.issuer, subject=identity.subject,
                                 groups=list(identity.groups))
                elif user.disabled:
                    raise _refused("disabled", "Your account on this node has been disabled by its owner.")
                elif user.role != identity.role:
                    audit.append(session, f"oidc:{identity.name}", "user_role", None, user=identity.name,
                                 old_role=user.role, role=identity.role, issuer=identity.issuer,
                                 groups=list(identity.groups))
                    user.role = identity.role
                    link.last_role = identity.role
        if conflict:
            self._audit_refusal(identity.name, "oidc_user_conflict", subject=identity.subject)
            raise NotAuthorized(f"The user name {identity.name!r} on this node belongs to another account; the "
                                "node's owner can set [oidc] username_prefix or username_claim.",
                                code="oidc_user_conflict")

