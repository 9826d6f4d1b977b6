"""The analyst's DPoP key (RFC 9449) and the proofs made with it, so bound tokens work transparently.

One EC P-256 key per user, kept 0600 beside the client config
(``dpop_key.pem`` next to :func:`workbench.config.config_path`). Its thumbprint
(``workbench dpop-key``) is what a node owner binds a node-issued token to;
``wb.login`` binds provider tokens to it by sending a proof to the token
endpoint. :class:`DPoPAuth` signs a fresh proof (new ``jti``, ``iat`` now,
``htm``/``htu`` of the request, ``ath`` of the token) for every request.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Generator

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from ..config import config_path
from ..node.dpop import jwk_thumbprint, normal_htu, token_hash

__all__ = ["DPoPAuth", "DPoPKey", "default_key_path"]

ALGORITHM = "ES256"


def default_key_path() -> Path:
    """``dpop_key.pem`` in the folder of the client config (``$WORKBENCH_DPOP_KEY`` overrides)."""
    explicit = os.environ.get("WORKBENCH_DPOP_KEY")
    return Path(explicit).expanduser() if explicit else config_path().parent / "dpop_key.pem"


class DPoPKey:
    """A private EC P-256 key that signs DPoP proofs; never leaves this machine."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey):
        self._key = private_key
        self.public_jwk = {k: v for k, v in ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True).items()
                           if k in ("kty", "crv", "x", "y")}
        self.thumbprint = jwk_thumbprint(self.public_jwk)

    @classmethod
    def generate(cls) -> "DPoPKey":
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def load_or_create(cls, path: str | Path | None = None) -> "DPoPKey":
        """The key stored at ``path`` (default :func:`default_key_path`), created 0600 on first use."""
        path = Path(path) if path is not None else default_key_path()
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{path} is not an EC private key")
            return cls(key)
        made = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        pem = made._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        return made

    def proof(self, method: str, url: str, access_token: str | None = None, nonce: str | None = None) -> str:
        """A one-use proof for ``method url`` (and ``access_token``, whose hash it carries)."""
        claims = {"jti": secrets.token_urlsafe(16), "htm": method.upper(), "htu": normal_htu(url),
                  "iat": int(time.time())}
        if access_token is not None:
            claims["ath"] = token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        return jwt.encode(claims, self._key, algorithm=ALGORITHM,
                          headers={"typ": "dpop+jwt", "jwk": self.public_jwk})


class DPoPAuth(httpx.Auth):
    """httpx auth: ``Authorization: DPoP <token>`` plus a fresh ``DPoP`` proof on every request."""

    def __init__(self, token: str, key: DPoPKey):
        self.token = token
        self.key = key

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"DPoP {self.token}"
        request.headers["DPoP"] = self.key.proof(request.method, str(request.url), self.token)
        yield request
