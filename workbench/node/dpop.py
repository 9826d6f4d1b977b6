"""Sender-constrained access tokens (DPoP, RFC 9449), as the FAPI 2.0 Security Profile asks.

A DPoP-bound token carries ``cnf.jkt``: the RFC 7638 thumbprint of a public
key only its holder can sign with. It is sent as ``Authorization: DPoP
<token>`` together with a ``DPoP`` header: a fresh proof JWT (``typ``
``dpop+jwt``) signed by that key, whose public JWK is in its header, and whose
claims say which request it is for. :meth:`ProofChecker.check` refuses (401
``not_authenticated``, ``details.reason`` says which rule) a proof that:

- is not a JWT of type ``dpop+jwt`` or uses an algorithm outside
  :data:`PROOF_ALGORITHMS` (so ``alg=none`` and every HMAC algorithm);
- embeds no public JWK, or a private or symmetric one, or does not verify with it;
- names another method (``htm``) or URL (``htu``, compared without query and fragment);
- was made more than ``window_s`` seconds before or after now (``iat``);
- does not carry ``ath`` = base64url(SHA-256(access token));
- reuses a ``jti`` already seen within the window (per node process);
- is signed by a key whose thumbprint is not the token's ``cnf.jkt`` (a stolen token).

A bound token sent as ``Bearer`` is refused (``bound_token_as_bearer``), and
with ``[node] require_sender_constrained = true`` so is every unbound token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from typing import Callable, Mapping
from urllib.parse import urlsplit, urlunsplit

import jwt

from ..errors import NotAuthenticated

#: Asymmetric algorithms a proof may use: never ``none`` and never HMAC.
PROOF_ALGORITHMS = ("ES256", "ES384", "ES512", "EdDSA", "Ed25519", "RS256", "PS256")
MAX_PROOF_BYTES = 8 * 1024
MAX_REMEMBERED_JTIS = 100_000
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}


def refused(reason: str, message: str) -> NotAuthenticated:
    return NotAuthenticated(message, code="not_authenticated", details={"reason": reason})


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638 SHA-256 thumbprint of a public JWK (the value of ``cnf.jkt``)."""
    members = _THUMBPRINT_MEMBERS.get(str(jwk.get("kty")))
    if members is None or any(not isinstance(jwk.get(m), str) for m in members):
        raise refused("dpop_key", "The DPoP proof's key is not an EC, OKP or RSA public key.")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def bound_key(claims: Mapping[str, object]) -> str | None:
    """The ``cnf.jkt`` a token's claims bind it to, or None."""
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    return jkt if isinstance(jkt, str) else None


def token_hash(access_token: str) -> str:
    """The ``ath`` claim: base64url SHA-256 of the access token's ASCII bytes."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


def normal_htu(url: str) -> str:
    """A URL as ``htu`` compares it: scheme and host lower-case, no query, no fragment."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), parts.path or "/", "", ""))


class ProofChecker:
    """Verifies DPoP proofs and remembers their ``jti`` for the ``iat`` window (one per node process)."""

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.time):
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[str, float] = {}  # jti -> when it may be forgotten (epoch s)
        self._lock = threading.Lock()

    def check(self, proof: str, method: str, url: str, access_token: str) -> str:
        """The thumbprint of the key that signed a valid proof for this request and token; else 401."""
        if len(proof) > MAX_PROOF_BYTES:
            raise refused("dpop_malformed", "The DPoP proof is too large.")
        try:
            header = jwt.get_unverified_header(proof)
        except jwt.PyJWTError:
            raise refused("dpop_malformed", "The DPoP header is not a JWT.") from None
        if header.get("typ") != "dpop+jwt":
            raise refused("dpop_malformed", "The DPoP proof's typ must be 'dpop+jwt'.")
        alg = header.get("alg")
        if alg not in PROOF_ALGORITHMS:
            raise refused("dpop_algorithm", f"DPoP proofs signed with {alg!r} are not accepted "
                                            f"(allowed: {list(PROOF_ALGORITHMS)}).")
        claims = self._verified_claims(proof, header, alg)
        self._check_request(claims, method, url, access_token)
        self._remember(claims["jti"])
        return jwk_thumbprint(header["jwk"])

    def _verified_claims(self, proof: str, header: dict, alg: str) -> dict:
        jwk = header.get("jwk")
        if not isinstance(jwk, dict) or jwk.get("kty") == "oct" or any(k in jwk for k in ("d", "p", "q", "k")):
            raise refused("dpop_key", "The DPoP proof must embed its public key (jwk), never a private or "
                                      "symmetric one.")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg)
            return jwt.decode(proof, key.key, algorithms=[alg], options={"require": ["jti", "htm", "htu", "iat"],
                                                                         "verify_iat": False})
        except jwt.MissingRequiredClaimError as exc:
            raise refused("dpop_claims", f"The DPoP proof lacks the claim {exc.claim!r}.") from None
        except jwt.InvalidSignatureError:
            raise refused("dpop_signature", "The DPoP proof's signature does not verify with its key.") from None
        except (jwt.PyJWTError, jwt.PyJWKError, ValueError, TypeError) as exc:
            raise refused("dpop_malformed", f"The DPoP proof is not valid: {exc}.") from None

    def _check_request(self, claims: dict, method: str, url: str, access_token: str) -> None:
        if claims["htm"] != method.upper():
            raise refused("dpop_htm", f"The DPoP proof is for {claims['htm']!r}, not this {method.upper()} request.")
        if not isinstance(claims["htu"], str) or normal_htu(claims["htu"]) != normal_htu(url):
            raise refused("dpop_htu", f"The DPoP proof is for {claims['htu']!r}, not {normal_htu(url)!r}.")
        iat = claims["iat"]
        if not isinstance(iat, (int, float)) or abs(self.clock() - iat) > self.window_s:
            raise refused("dpop_iat", f"The DPoP proof was not made within {self.window_s:g} s of now "
                                      "(make a fresh one per request; check the clock).")
        if not isinstance(claims["jti"], str) or not 8 <= len(claims["jti"]) <= 256:
            raise refused("dpop_claims", "The DPoP proof's jti must be a string of 8 to 256 characters.")
        if claims.get("ath") != token_hash(access_token):
            raise refused("dpop_ath", "The DPoP proof's ath is not the hash of this access token.")

    def _remember(self, jti: str) -> None:
        now = self.clock()
        with self._lock:
            if jti in self._seen and self._seen[jti] > now:
                raise refused("dpop_replay", "This DPoP proof was used before; make a fresh one per request.")
            if len(self._seen) >= MAX_REMEMBERED_JTIS:
                self._seen = {j: t for j, t in self._seen.items() if t > now}
                if len(self._seen) >= MAX_REMEMBERED_JTIS:
                    raise refused("dpop_busy", "Too many DPoP proofs in the window; try again shortly.")
            self._seen[jti] = now + 2 * self.window_s  # covers iat anywhere in [now - window, now + window]


def check_sender(checker: ProofChecker, *, bound_jkt: str | None, scheme: str, proof: str | None, method: str,
                 url: str, access_token: str, required: bool) -> None:
    """Enforce sender constraint for one request whose token was already verified (401 with a reason if not)."""
    if bound_jkt is None:
        if required:
            raise refused("sender_constrained_required", "This node accepts only DPoP-bound tokens (FAPI 2.0); "
                                                         "get one with wb.login(..., dpop=True).")
        if scheme == "dpop":
            raise refused("not_bound", "The token is not DPoP-bound; send it as 'Authorization: Bearer'.")
        return
    if scheme != "dpop":
        raise refused("bound_token_as_bearer", "This token is DPoP-bound: send it as 'Authorization: DPoP' with a "
                                               "DPoP proof (wb.connect does this for you).")
    if proof is None:
        raise refused("dpop_missing", "A DPoP-bound token needs a DPoP proof header with every request.")
    if checker.check(proof, method, url, access_token) != bound_jkt:
        raise refused("dpop_key_mismatch", "The DPoP proof is signed by another key than the one the token is "
                                           "bound to.")
