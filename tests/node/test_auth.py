"""Node-issued tokens: every kind of bad token gets 401; roles are enforced."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.node import admin
from workbench.node.store import User

ME = "/v1/me"


def _claims(service, **over):
    now = int(time.time())
    claims = {"iss": service.authority.issuer, "aud": service.authority.audience, "sub": "analyst", "role": "analyst",
              "ver": 1, "iat": now, "exp": now + 600, "jti": "abc123"}
    claims.update(over)
    return claims


def _b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def _status(client, token):
    r = client.get(ME, headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json()


def test_valid_token(app_client):
    status, body = _status(app_client, app_client.analyst["Authorization"].split()[1])
    assert status == 200 and body["user"] == "analyst" and body["role"] == "analyst"


def test_missing_and_garbage_tokens(app_client):
    assert app_client.get(ME).status_code == 401
    assert app_client.get(ME, headers={"Authorization": "Basic abc"}).status_code == 401
    for token in ("x", "a.b.c", "", "eyJhbGciOiJFZERTQSJ9..."):
        assert _status(app_client, token)[0] == 401


def test_forged_signature(app_client, service):
    other = Ed25519PrivateKey.generate()
    token = jwt.encode(_claims(service), other, algorithm="EdDSA")
    status, body = _status(app_client, token)
    assert status == 401 and body["code"] == "not_authenticated"


def test_alg_none(app_client, service):
    token = _b64({"alg": "none", "typ": "JWT"}) + "." + _b64(_claims(service)) + "."
    assert _status(app_client, token)[0] == 401


def test_hs256_signed_with_the_public_key(app_client, service):
    public_pem = service.authority._public.public_bytes(serialization.Encoding.PEM,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64({"alg": "HS256", "typ": "JWT"})
    payload = _b64(_claims(service))
    import hashlib
    import hmac

    sig = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    assert _status(app_client, token)[0] == 401


@pytest.mark.parametrize("override", [
    {"exp": int(time.time()) - 10},
    {"aud": "workbench:some-other-node"},
    {"iss": "someone-else"},
    {"ver": 2},
    {"sub": "nobody"},
])
def test_expired_wrong_audience_issuer_version_user(app_client, service, override):
    token = jwt.encode(_claims(service, **override), service.authority._key, algorithm="EdDSA")
    status, body = _status(app_client, token)
    assert status == 401 and body["code"] == "not_authenticated"


def test_token_revocation(app_client, service):
    old = app_client.analyst["Authorization"].split()[1]
    new = admin.issue_token(service.store, service.authority, "analyst", revoke_old=True)
    assert _status(app_client, old)[0] == 401
    assert _status(app_client, new)[0] == 200


def test_roles(app_client, service):
    auditor = admin.add_user(service.store, service.authority, "audrey", "auditor")
    h = {"Authorization": f"Bearer {auditor}"}
    r = app_client.post("/v1/datasets/patients/dp/release", json={"query": {"kind": "count"}, "epsilon": 0.1},
                        headers=h)
    assert r.status_code == 403 and r.json()["code"] == "not_authorized"
    assert app_client.get("/v1/audit/verify", headers=h).json()["ok"]
    # Analysts cannot administer.
    r = app_client.post("/v1/grants", json={"user": "analyst", "dataset": "patients", "purpose": "more", "epsilon": 99},
                        headers=app_client.analyst)
    assert r.status_code == 403
    r = app_client.post("/v1/users", json={"name": "mallory", "role": "owner"}, headers=app_client.analyst)
    assert r.status_code == 403
    assert app_client.get("/v1/audit/verify", headers=app_client.analyst).status_code == 403
    # The owner can.
    r = app_client.post("/v1/grants", json={"user": "analyst", "dataset": "patients", "purpose": "second study",
                                            "epsilon": 1}, headers=app_client.owner)
    assert r.status_code == 200 and r.json()["purpose"] == "second study"


def test_tokens_never_stored_or_logged(app_client, service, caplog):
    token = app_client.analyst["Authorization"].split()[1]
    app_client.get(ME, headers=app_client.analyst)
    app_client.get(ME, headers={"Authorization": "Bearer " + token[:-4] + "AAAA"})
    audit_text = app_client.get("/v1/audit", headers=app_client.owner).text
    assert token not in audit_text and token not in caplog.text
    db = service.config.database_url.split("///")[1]
    assert token.encode() not in open(db, "rb").read()
    with service.store.transaction() as session:
        assert session.query(User).count() >= 2
