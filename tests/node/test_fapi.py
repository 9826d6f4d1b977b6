"""FAPI 2.0 against the real provider (npm oidc-provider, ``features.fapi`` profile 2.0, DPoP on).

A node with ``require_sender_constrained = true`` serves DPoP-bound tokens only. The kernel library
gets bound tokens (client credentials; authorization code + PKCE + PAR walked through the provider's
real pages) and makes proofs transparently; the attacker's requests are made by hand: replayed proofs,
a stolen token with another key, proofs for another URL or method, a stale iat, alg=none and HMAC
proofs, the bound token sent as Bearer. Each is refused with 401 and a reason.
"""

from __future__ import annotations

import html
import json
import os
import re
import signal
import time
import tomllib
from urllib.parse import urljoin

import httpx
import jwt
import pytest
import tomli_w

import workbench as wb
from workbench.client.code_flow import AuthorizationPrompt
from workbench.client.dpop import DPoPKey
from workbench.node.dpop import ProofChecker, jwk_thumbprint, token_hash

from tests.conftest import make_config, provision, start_node
from tests.node.test_oidc import AUDIENCE, SECRETS, Provider, b64, cli, oidc_table, rsa_jwk

SECRETS.setdefault("wb-dpop-svc", "dpop-secret")
pytestmark = pytest.mark.skipif(__import__("shutil").which("node") is None, reason="needs Node.js (oidc-provider)")


@pytest.fixture(scope="module")
def fapi_provider(tmp_path_factory):
    p = Provider(tmp_path_factory.mktemp("fapi-idp"), jwks={"keys": [rsa_jwk("fapi-key")]}, fapi=True).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def strict_node(fapi_provider, tmp_path_factory):
    """A real node process that trusts the FAPI provider and refuses every unbound token."""
    path = make_config(tmp_path_factory.mktemp("fapi-node"), require_sender_constrained=True)
    raw = tomllib.loads(path.read_text())
    raw["oidc"] = oidc_table(fapi_provider.issuer)
    path.write_text(tomli_w.dumps(raw))
    accounts = provision(path)
    proc = start_node(path)

    class N:
        url = f"http://127.0.0.1:{raw['node']['port']}"
        config = path
        owner_token = accounts.owner_token

    yield N
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> DPoPKey:
    return DPoPKey.load_or_create(tmp_path_factory.mktemp("analyst") / "dpop_key.pem")


@pytest.fixture(scope="module")
def bound_token(fapi_provider, key):
    return wb.login(fapi_provider.issuer, client_id="wb-dpop-svc", client_secret="dpop-secret", audience=AUDIENCE,
                    dpop_key=key)


def proof_with(key: DPoPKey, claims: dict, alg: str = "ES256", signing_key=None, **header) -> str:
    """A proof with any claims, as an attacker could make one (the header's jwk is ``key``'s)."""
    return jwt.encode(claims, signing_key or key._key, algorithm=alg,
                      headers={"typ": "dpop+jwt", "jwk": key.public_jwk, **header})


def good_claims(method: str, url: str, token: str, **changes) -> dict:
    return {"jti": os.urandom(12).hex(), "htm": method, "htu": url, "iat": int(time.time()),
            "ath": token_hash(token), **changes}


def call(node, token: str, proof: str | None, scheme: str = "DPoP", path: str = "/v1/me",
         method: str = "GET") -> httpx.Response:
    headers = {"Authorization": f"{scheme} {token}", **({"DPoP": proof} if proof else {})}
    return httpx.request(method, node.url + path, headers=headers, timeout=30)


def assert_refused(response: httpx.Response, reason: str) -> None:
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "not_authenticated" and body["details"]["reason"] == reason, body
    assert response.json()["message"], "a refusal says why"


# --------------------------------------------------------------------------- the provider in FAPI 2.0 mode


def test_provider_binds_tokens_and_insists_on_dpop(fapi_provider, bound_token, key):
    assert bound_token.claims["cnf"] == {"jkt": key.thumbprint}, "the real provider bound the token to our key"
    discovery = httpx.get(fapi_provider.url + "/.well-known/openid-configuration", timeout=10).json()
    assert "ES256" in discovery["dpop_signing_alg_values_supported"]
    assert discovery["pushed_authorization_request_endpoint"].endswith("/request")
    refused = httpx.post(fapi_provider.url + "/token", auth=("wb-dpop-svc", "dpop-secret"),
                         data={"grant_type": "client_credentials", "resource": AUDIENCE}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_grant", "no proof, no token"


def test_client_library_sends_proofs_transparently(strict_node, bound_token, key):
    node = wb.connect(strict_node.url, token=bound_token, dpop_key=key)
    assert node.info()["user"] == "wb-dpop-svc" and node.info()["role"] == "analyst"
    assert "patients" in set(node.catalog()["name"])
    cli(strict_node.config, "grant", "wb-dpop-svc", "patients", "--purpose", "diabetes study", "--epsilon", "1")
    ds = node.dataset("patients")
    first = ds.count().release(epsilon=0.1)
    again = ds.count().release(epsilon=0.1)  # the same question: answered from memory, proof still checked
    assert first["estimate"].iloc[0] == again["estimate"].iloc[0]
    assert ds.budget()["epsilon"] == pytest.approx(0.9)
    node.close()


def test_replayed_proof_is_refused_even_on_the_replay_fast_path(strict_node, bound_token, key):
    url = strict_node.url + "/v1/me"
    proof = key.proof("GET", url, bound_token)
    assert call(strict_node, bound_token, proof).status_code == 200
    assert_refused(call(strict_node, bound_token, proof), "dpop_replay")
    # The DP release endpoint (whose answers can come from the fast replay path) checks proofs too.
    seen: list[httpx.Request] = []
    node = wb.connect(strict_node.url, token=bound_token, dpop_key=key)
    node._http.event_hooks["request"].append(seen.append)
    node.dataset("patients").count().release(epsilon=0.1)
    sent = next(r for r in reversed(seen) if r.url.path.endswith("/dp/release"))
    again = httpx.post(str(sent.url), content=sent.content, timeout=30,
                       headers={k: v for k, v in sent.headers.items() if k.lower() != "content-length"})
    assert_refused(again, "dpop_replay")
    node.close()


def test_stolen_token_with_another_key(strict_node, bound_token):
    thief = DPoPKey.generate()
    url = strict_node.url + "/v1/me"
    assert_refused(call(strict_node, bound_token, thief.proof("GET", url, bound_token)), "dpop_key_mismatch")
    assert_refused(call(strict_node, bound_token, None, scheme="Bearer"), "bound_token_as_bearer")
    assert_refused(call(strict_node, bound_token, None), "dpop_missing")


def test_a_flood_of_bad_proofs_with_a_stolen_token_adds_few_audit_records(strict_node, bound_token):
    """Each refusal is evidence, but a thief replaying a stolen token must not grow the audit log per request."""
    thief = DPoPKey.generate()
    url = strict_node.url + "/v1/me"
    for _ in range(30):
        assert_refused(call(strict_node, bound_token, thief.proof("GET", url, bound_token)), "dpop_key_mismatch")
    records = [json.loads(line) for line in cli(strict_node.config, "audit", "export").splitlines() if line.strip()]
    refusals = [r for r in records if r["action"].startswith("auth_failed")
                and r["details"].get("kind") == "dpop_key_mismatch"]
    assert 1 <= len(refusals) <= 2, [r["action"] for r in refusals]
    assert "a token of 'wb-dpop-svc'" in refusals[0]["details"]["reason"], "the owner sees whose token it was"


def test_two_proofs_in_one_request(strict_node, bound_token, key):
    me = strict_node.url + "/v1/me"
    headers = [("Authorization", f"DPoP {bound_token}"), ("DPoP", key.proof("GET", me, bound_token)),
               ("DPoP", key.proof("GET", me, bound_token))]
    assert_refused(httpx.get(me, headers=headers, timeout=30), "dpop_malformed")


def test_proof_for_another_url_or_method(strict_node, bound_token, key):
    me = strict_node.url + "/v1/me"
    assert_refused(call(strict_node, bound_token, key.proof("GET", strict_node.url + "/v1/catalog", bound_token)),
                   "dpop_htu")
    assert_refused(call(strict_node, bound_token, key.proof("POST", me, bound_token)), "dpop_htm")
    assert_refused(call(strict_node, bound_token, key.proof("GET", me, "another-token")), "dpop_ath")
    assert_refused(call(strict_node, bound_token, key.proof("GET", me)), "dpop_ath")


def test_stale_or_future_iat(strict_node, bound_token, key):
    me = strict_node.url + "/v1/me"
    for iat in (int(time.time()) - 3600, int(time.time()) + 3600):
        assert_refused(call(strict_node, bound_token, proof_with(key, good_claims("GET", me, bound_token, iat=iat))),
                       "dpop_iat")


def test_alg_none_and_hmac_proofs(strict_node, bound_token, key):
    me = strict_node.url + "/v1/me"
    claims = good_claims("GET", me, bound_token)
    header = {"typ": "dpop+jwt", "jwk": key.public_jwk}
    for alg in ("none", "None"):
        unsigned = f"{b64({**header, 'alg': alg})}.{b64(claims)}."
        assert_refused(call(strict_node, bound_token, unsigned), "dpop_algorithm")
    for alg in ("HS256", "HS512"):
        secret = json.dumps(key.public_jwk).encode() * 2
        assert_refused(call(strict_node, bound_token, proof_with(key, good_claims("GET", me, bound_token), alg=alg,
                                                                 signing_key=secret)), "dpop_algorithm")
    private = {**key.public_jwk, "d": "x"}
    leaked = jwt.encode(good_claims("GET", me, bound_token), key._key, algorithm="ES256",
                        headers={"typ": "dpop+jwt", "jwk": private})
    assert_refused(call(strict_node, bound_token, leaked), "dpop_key")
    other = DPoPKey.generate()
    forged = proof_with(key, good_claims("GET", me, bound_token), signing_key=other._key)
    assert_refused(call(strict_node, bound_token, forged), "dpop_signature")


def test_plain_bearer_tokens_are_refused_when_sender_constraint_is_required(strict_node, fapi_provider):
    unbound = fapi_provider.token("wb-analyst-svc")
    assert "cnf" not in jwt.decode(unbound, options={"verify_signature": False})
    assert_refused(call(strict_node, unbound, None, scheme="Bearer"), "sender_constrained_required")
    assert_refused(call(strict_node, strict_node.owner_token, None, scheme="Bearer"), "sender_constrained_required")


def test_node_issued_token_bound_to_the_analysts_key(strict_node, key, tmp_path):
    """The owner binds a node token to the thumbprint the analyst sends (``workbench dpop-key``)."""
    token = cli(strict_node.config, "user", "token", "analyst", "--dpop-jkt", key.thumbprint).strip()
    assert jwt.decode(token, options={"verify_signature": False})["cnf"]["jkt"] == key.thumbprint
    node = wb.connect(strict_node.url, token=token, dpop_key=key)
    assert node.info()["user"] == "analyst"
    node.close()
    with pytest.raises(wb.NotAuthenticated) as stolen:
        wb.connect(strict_node.url, token=token, dpop_key=DPoPKey.generate()).info()
    assert stolen.value.details["reason"] == "dpop_key_mismatch"


def walk_login_pages(prompt: AuthorizationPrompt, login: str) -> None:
    """The person in the browser: the provider's sign-in and consent pages, then the loopback redirect."""
    with httpx.Client(follow_redirects=True, timeout=20) as browser:
        page = browser.get(prompt.url)
        for _ in range(10):
            if "login complete" in page.text:
                return
            form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page.text, flags=re.S)
            assert form, f"no form on {page.url}: {page.text[:500]}"
            fields = {}
            for tag in re.findall(r"<input([^>]*)>", form.group(2)):
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
                if "name" in attrs:
                    fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
            if "login" in fields:
                fields.update(login=login, password="any")
            page = browser.post(urljoin(str(page.url), html.unescape(form.group(1))), data=fields)
        raise AssertionError(f"login did not finish: {page.text[:500]}")


def test_authorization_code_with_pkce_and_par(fapi_provider, strict_node, key):
    prompts: list[AuthorizationPrompt] = []

    def person(prompt):
        prompts.append(prompt)
        assert "request_uri=urn" in prompt.url and "code_challenge" not in prompt.url, "PAR: nothing else in the URL"
        walk_login_pages(prompt, login="alice")

    token = wb.login(fapi_provider.issuer, client_id="wb-notebook", flow="interactive", audience=AUDIENCE,
                     dpop_key=key, on_prompt=person, login_wait_s=120)
    assert len(prompts) == 1 and token.claims["sub"] == "alice"
    assert token.claims["cnf"] == {"jkt": key.thumbprint}
    node = wb.connect(strict_node.url, token=token, dpop_key=key)
    assert node.info()["user"] == "alice" and node.info()["role"] == "analyst"
    node.close()


def test_proof_checker_window_with_an_injected_clock(key):
    now = [1_000_000.0]
    checker = ProofChecker(window_s=60, clock=lambda: now[0])
    claims = {"jti": "abcdefgh-1", "htm": "GET", "htu": "http://n/v1/me", "iat": int(now[0]), "ath": token_hash("t")}
    proof = proof_with(key, claims)
    assert checker.check(proof, "GET", "http://n/v1/me?x=1", "t") == jwk_thumbprint(key.public_jwk)
    now[0] += 59
    with pytest.raises(wb.NotAuthenticated, match="used before"):
        checker.check(proof, "GET", "http://n/v1/me", "t")
    now[0] += 2  # past the window: the jti may be forgotten, and the iat is stale anyway
    with pytest.raises(wb.NotAuthenticated) as stale:
        checker.check(proof, "GET", "http://n/v1/me", "t")
    assert stale.value.details["reason"] == "dpop_iat"


def test_dpop_key_cli_creates_a_private_key_once(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "WORKBENCH_DPOP_KEY": str(tmp_path / "dpop_key.pem")}
    first = subprocess.run([sys.executable, "-m", "workbench.cli", "dpop-key"], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()[0]
    assert oct((tmp_path / "dpop_key.pem").stat().st_mode & 0o777) == "0o600"
    again = subprocess.run([sys.executable, "-m", "workbench.cli", "dpop-key"], env=env, capture_output=True,
                           text=True, timeout=60, check=True).stdout.split()[0]
    assert first == again == DPoPKey.load_or_create(tmp_path / "dpop_key.pem").thumbprint and len(first) == 43
