"""The consortium directory's signature rules, and protocol version choice (no servers needed)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from workbench.directory import Member, load_or_create_signing_key, public_jwk, sign, verify
from workbench.errors import NotAuthenticated
from workbench.protocol import highest_common

MEMBERS = [Member(name="hospital-a", url="https://a.example", catalogue_url="https://a.example/v1/catalog.jsonld")]


def reason(excinfo) -> str:
    assert excinfo.value.code == "directory_untrusted"
    return excinfo.value.details["reason"]


def test_sign_and_verify(tmp_path):
    key = load_or_create_signing_key(tmp_path / "c.pem")
    assert oct((tmp_path / "c.pem").stat().st_mode & 0o777) == "0o600"
    assert load_or_create_signing_key(tmp_path / "c.pem").private_bytes_raw() == key.private_bytes_raw()
    directory = verify(sign("nsh", MEMBERS, key, valid_days=1), public_jwk(key))
    assert directory.consortium == "nsh" and directory.member("hospital-a").url == "https://a.example"


def test_refusals():
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    token = sign("nsh", MEMBERS, key, valid_days=1)
    with pytest.raises(NotAuthenticated) as wrong_key:
        verify(token, public_jwk(other))
    assert reason(wrong_key) == "signature"
    with pytest.raises(NotAuthenticated) as expired:
        verify(token, public_jwk(key), now=datetime.now(timezone.utc) + timedelta(days=2))
    assert reason(expired) == "expired"
    hmac = jwt.api_jws.encode(b"{}", "s" * 32, algorithm="HS256", headers={"typ": "workbench-directory+jwt"})
    with pytest.raises(NotAuthenticated) as symmetric:
        verify(hmac, public_jwk(key))
    assert reason(symmetric) == "algorithm"
    with pytest.raises(NotAuthenticated) as garbage:
        verify("not-a-jws", public_jwk(key))
    assert reason(garbage) == "malformed"


def test_highest_common_protocol():
    assert highest_common("1, 2") == "2"
    assert highest_common("1") == "1"
    assert highest_common("2, 10") == "2"
    assert highest_common("7, 8") is None and highest_common("") is None


def test_a_consortium_key_file_that_cannot_be_read_is_a_clear_error(tmp_path):
    from workbench.client.directory import from_directory
    from workbench.errors import InvalidQuery

    (tmp_path / "broken.jwk").write_text("{not json")
    (tmp_path / "list.jwk").write_text("[1, 2]")
    for name in ("missing.jwk", "broken.jwk", "list.jwk"):
        with pytest.raises(InvalidQuery) as bad:
            from_directory("https://consortium.example/directory.jws", tmp_path / name)
        assert bad.value.code == "invalid_query" and name in bad.value.message
