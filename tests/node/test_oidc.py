"""OpenID Connect against a real provider: npm's certified ``oidc-provider`` (tests/oidc/server.mjs).

The provider runs as its own process on a free loopback port, issues real JWT access tokens
(client credentials and device flow), and is restarted with a new key set to rotate keys. The
forged tokens are the attacker's: alg=none and tampered payloads are edited from real tokens; the
HS256-with-the-public-key forgery and the foreign-key token come from real provider processes
configured as an attacker would.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from urllib.parse import urljoin

import httpx
import jwt
import pytest
import tomli_w
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import workbench as wb
from workbench.client.login import DeviceCode
from workbench.errors import InvalidQuery, NotAuthenticated, NotAuthorized

from tests.conftest import free_port, make_config, provision, start_node

OIDC_DIR = Path(__file__).parents[1] / "oidc"
AUDIENCE = "urn:workbench:hospital-a"
ROLE_MAP = {"wb-analysts": "analyst", "wb-auditors": "auditor", "wb-owners": "owner"}
PURPOSE_MAP = {"study-diabetes": ["diabetes study"], "wb-owners": ["*"]}
SECRETS = {"wb-analyst-svc": "analyst-secret", "wb-auditor-svc": "auditor-secret", "wb-owner-svc": "owner-secret",
           "wb-nogroup-svc": "nogroup-secret", "wb-short-svc": "short-secret", "wb-hs256-svc": "hs256-secret",
           "wb-es256-svc": "es256-secret"}

pytestmark = pytest.mark.skipif(shutil.which("node") is None,
                                reason="Node.js is not installed: the real OIDC provider (npm oidc-provider) needs it")


# --------------------------------------------------------------------------- the provider process


def rsa_jwk(kid: str) -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
    jwk.update(kid=kid, use="sig", alg="RS256")
    return jwk


def ec_jwk(kid: str) -> dict:
    jwk = ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP256R1()), as_dict=True)
    jwk.update(kid=kid, use="sig", alg="ES256")
    return jwk


def _ensure_npm_packages() -> None:
    if (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        return
    # scripts/setup --test runs this; do it here too so a fresh checkout still tests for real
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--cache", "/tmp/workbench-npm-cache"], cwd=OIDC_DIR,
                   check=True, capture_output=True, timeout=300)


class Provider:
    """``node server.mjs CONFIG`` in its own session; ``restart(jwks)`` keeps the port (key rotation)."""

    def __init__(self, tmp: Path, port: int | None = None, **config):
        self.tmp = tmp
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = {"port": self.port, "audience": AUDIENCE, **config}
        self.process: subprocess.Popen | None = None

    @property
    def issuer(self) -> str:
        return self.config.get("issuer", self.url)

    def start(self) -> "Provider":
        _ensure_npm_packages()
        cfg = self.tmp / f"oidc-{self.port}.json"
        cfg.write_text(json.dumps(self.config))
        self.log = self.tmp / f"oidc-{self.port}.log"
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(["node", "server.mjs", str(cfg)], cwd=OIDC_DIR, start_new_session=True,
                                            stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"oidc-provider exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/.well-known/openid-configuration", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"oidc-provider did not start in 30 s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)

    def restart(self, **changes) -> "Provider":
        self.stop()
        self.config.update(changes)
        return self.start()

    def token(self, client_id: str = "wb-analyst-svc", resource: str = AUDIENCE) -> str:
        response = httpx.post(self.url + "/token", auth=(client_id, SECRETS[client_id]),
                              data={"grant_type": "client_credentials", "resource": resource}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["access_token"]


def confirm_in_browser(code: DeviceCode, login: str) -> None:
    """What the person does with the user code: walk the provider's real pages (code, sign-in, consent)."""
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(code.verification_uri)
        for _ in range(10):
            if "Sign-in Success" in page.text:
                return
            form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page.text, flags=re.S)
            assert form, f"no form on {page.url}: {page.text[:500]}"
            fields = {}
            for tag in re.findall(r"<input([^>]*)>", form.group(2)):
                attrs = dict(re.findall(r'(\w+)="([^"]*)"', tag))
                if "name" in attrs:
                    fields[attrs["name"]] = html.unescape(attrs.get("value", ""))
            if "user_code" in fields and not fields["user_code"]:
                fields["user_code"] = code.user_code  # typed by the person
            if "login" in fields:
                fields.update(login=login, password="any")
            page = browser.post(urljoin(str(page.url), html.unescape(form.group(1))), data=fields)
        raise AssertionError(f"device confirmation did not finish: {page.text[:500]}")


# --------------------------------------------------------------------------- fixtures


def oidc_table(issuer: str, **overrides) -> dict:
    return {"issuer": issuer, "audience": AUDIENCE, "role_map": ROLE_MAP, "purpose_map": PURPOSE_MAP,
            "leeway_s": 0, "jwks_refetch_min_s": 1, **overrides}


def write_oidc_config(root: Path, issuer: str, **overrides) -> Path:
    path = make_config(root)
    raw = tomllib.loads(path.read_text())
    raw["oidc"] = oidc_table(issuer, **overrides)
    path.write_text(tomli_w.dumps(raw))
    return path


@pytest.fixture(scope="module")
def provider(tmp_path_factory):
    p = Provider(tmp_path_factory.mktemp("idp"), jwks={"keys": [rsa_jwk("key-2025-a"), ec_jwk("key-2025-ec")]},
                 short_ttl_s=3).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def node(provider, tmp_path_factory):
    """A real ``workbench node serve`` process that trusts the provider."""
    config_path = write_oidc_config(tmp_path_factory.mktemp("node"), provider.issuer)
    accounts = provision(config_path)
    port = tomllib.loads(config_path.read_text())["node"]["port"]
    proc = start_node(config_path)

    class N:
        url = f"http://127.0.0.1:{port}"
        owner_token = accounts.owner_token
        config = config_path

    yield N
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=15)


def me(node, token: str) -> httpx.Response:
    return httpx.get(node.url + "/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def audit_records(node) -> list[dict]:
    text = httpx.get(node.url + "/v1/audit", headers={"Authorization": f"Bearer {node.owner_token}"}, timeout=30).text
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def cli(config: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "node", *args, "--config", str(config)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def users_of(node) -> dict[str, str]:
    """name -> role, read from the node's SQLite state (what `workbench node user list` prints)."""
    import sqlite3

    state = node.config.parent / tomllib.loads(node.config.read_text())["node"]["state_dir"]
    with sqlite3.connect(state / "node.sqlite") as db:
        return dict(db.execute("SELECT name, role FROM users"))


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# --------------------------------------------------------------------------- accepted tokens


def test_client_credentials_login_then_grant_then_dp_release(provider, node):
    """The kernel library logs in as a service account; the owner grants it by name; a DP release works."""
    token = wb.login(provider.issuer, client_id="wb-analyst-svc", client_secret="analyst-secret", audience=AUDIENCE)
    assert isinstance(token, str) and token.count(".") == 2
    assert token.claims["aud"] == AUDIENCE and token.claims["groups"] == ["wb-analysts", "study-diabetes"]
    assert 250 < token.expires_in <= 300 and "analyst-secret" not in repr(token) and str(token) not in repr(token)

    handle = wb.connect(node.url, token=token)
    assert handle.info()["user"] == "wb-analyst-svc" and handle.info()["role"] == "analyst"
    ds = handle.dataset("patients")
    with pytest.raises(wb.NotAuthorized) as refused:
        ds.count().release(epsilon=0.2)
    assert refused.value.code == "no_grant"

    # The user row exists since the first login, so the owner grants it like any user.
    assert users_of(node)["wb-analyst-svc"] == "analyst"
    cli(node.config, "grant", "wb-analyst-svc", "patients", "--purpose", "diabetes study", "--epsilon", "1")
    out = ds.count().release(epsilon=0.2)
    assert abs(out["estimate"].iloc[0] - 20_000) < 500
    assert ds.budget()["epsilon"] == pytest.approx(0.8)

    records = audit_records(node)
    added = [r for r in records if r["action"] == "user_add" and r["details"].get("user") == "wb-analyst-svc"]
    assert len(added) == 1 and added[0]["details"]["issuer"] == provider.issuer
    assert added[0]["details"]["role"] == "analyst"
    logins = [r for r in records if r["action"] == "login" and r["actor"] == "wb-analyst-svc"]
    assert logins and logins[0]["details"]["issuer"] == provider.issuer
    assert any(r["action"] == "release" and r["actor"] == "wb-analyst-svc" for r in records)
    handle.close()


def test_groups_map_to_roles(provider, node):
    es256 = provider.token("wb-es256-svc")
    assert jwt.get_unverified_header(es256)["alg"] == "ES256"
    assert me(node, es256).json()["role"] == "analyst", "ES256 (EC P-256) tokens work too"
    assert me(node, provider.token("wb-auditor-svc")).json()["role"] == "auditor"
    assert me(node, provider.token("wb-owner-svc")).json()["role"] == "owner"
    auditor = provider.token("wb-auditor-svc")
    verify = httpx.get(node.url + "/v1/audit/verify", headers={"Authorization": f"Bearer {auditor}"}, timeout=30)
    assert verify.status_code == 200, "an auditor from the identity provider may verify the audit chain"

    refused = me(node, provider.token("wb-nogroup-svc"))
    assert refused.status_code == 403 and refused.json()["code"] == "oidc_no_role"
    assert "role_map" in refused.json()["message"]
    assert any(r["action"] == "auth_refused" and r["details"]["code"] == "oidc_no_role" for r in audit_records(node))
    users = users_of(node)
    assert users["wb-auditor-svc"] == "auditor" and users["wb-owner-svc"] == "owner"
    assert "wb-nogroup-svc" not in users, "no row for a caller without a role"


def test_purposes_from_groups_limit_access_requests(provider, node):
    """purpose_map: wb-analyst-svc's group 'study-diabetes' allows only the purpose 'diabetes study'."""
    handle = wb.connect(node.url, token=provider.token("wb-analyst-svc"))
    ds = handle.dataset("patients")
    with pytest.raises(wb.NotAuthorized) as refused:
        ds.request_access(purpose="marketing", epsilon=1.0)
    assert refused.value.code == "purpose_not_allowed" and "diabetes study" in refused.value.message
    asked = ds.request_access(purpose="diabetes study", epsilon=1.0, note="cohort sizes")
    assert asked["status"] == "pending" and asked["user"] == "wb-analyst-svc"
    handle.close()


def test_device_flow_with_the_kernel_library(provider, node):
    """RFC 8628 end to end: start, a person confirms on the provider's pages, the kernel gets a token."""
    prompts = []

    def person(code):
        prompts.append(code)
        assert re.fullmatch(r"[A-Z]{4}-[A-Z]{4}", code.user_code)
        assert code.verification_uri == provider.url + "/device"
        confirm_in_browser(code, login="alice")

    token = wb.login(provider.issuer, client_id="wb-device", device=True, audience=AUDIENCE, on_prompt=person)
    assert len(prompts) == 1 and token.claims["sub"] == "alice"
    # The provider advertises DPoP, so wb.login bound the token to this user's key; wb.connect sends proofs.
    assert "jkt" in token.claims["cnf"]
    handle = wb.connect(node.url, token=token)
    assert (handle.info()["user"], handle.info()["role"]) == ("alice", "analyst")
    handle.close()
    assert me(node, token).json()["details"]["reason"] == "bound_token_as_bearer", "a bound token is no bearer token"
    # The ID token that came with it is for the client (aud = client id), not an access token for the node.
    assert token.id_token is not None
    refused = me(node, token.id_token)
    assert refused.status_code == 401 and refused.json()["details"]["reason"] == "audience"


def test_interactive_login_falls_back_to_the_device_flow_without_par(tmp_path):
    """flow="interactive": authorization code + PAR where offered (tests/node/test_fapi.py), else the device flow."""
    idp = Provider(tmp_path, jwks={"keys": [rsa_jwk("no-par")]}, par=False).start()
    try:
        discovery = httpx.get(idp.url + "/.well-known/openid-configuration", timeout=10).json()
        assert "pushed_authorization_request_endpoint" not in discovery
        prompts = []

        def person(prompt):
            prompts.append(prompt)
            confirm_in_browser(prompt, login="alice")

        token = wb.login(idp.issuer, client_id="wb-device", flow="interactive", audience=AUDIENCE,
                         on_prompt=person)
        assert isinstance(prompts[0], DeviceCode) and token.claims["sub"] == "alice"
    finally:
        idp.stop()


def test_unconfirmed_device_code_yields_no_token(provider):
    """Starting the flow gives the person a code; until they confirm, the token endpoint says 'pending'."""
    http = httpx.Client(timeout=10)
    start = http.post(provider.url + "/device/auth",
                      data={"client_id": "wb-device", "scope": "openid workbench", "resource": AUDIENCE}).json()
    assert {"device_code", "user_code", "verification_uri", "expires_in"} <= set(start)
    pending = http.post(provider.url + "/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                                                       "device_code": start["device_code"], "client_id": "wb-device"})
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    http.close()
    code = DeviceCode(user_code=start["user_code"], verification_uri=start["verification_uri"],
                      verification_uri_complete=start.get("verification_uri_complete"),
                      expires_in=start["expires_in"], interval=5)
    assert start["user_code"] in code.message() and start["verification_uri"] in code.message()


def test_login_secret_sources_and_saved_connection(provider, node, tmp_path, monkeypatch):
    with pytest.raises(InvalidQuery, match="secret"):
        wb.login(provider.issuer, client_id="wb-analyst-svc", audience=AUDIENCE)
    with pytest.raises(NotAuthenticated, match="invalid_client"):
        wb.login(provider.issuer, client_id="wb-analyst-svc", client_secret="wrong", audience=AUDIENCE)
    secret_file = tmp_path / "secret"
    secret_file.write_text("auditor-secret\n")
    by_file = wb.login(provider.issuer, client_id="wb-auditor-svc", client_secret_file=secret_file,
                       audience=AUDIENCE, auth_method="post")
    assert by_file.claims["sub"] == "wb-auditor-svc"
    monkeypatch.setenv("WORKBENCH_OIDC_CLIENT_SECRET", "analyst-secret")
    wb.login(provider.issuer, client_id="wb-analyst-svc", audience=AUDIENCE, node_url=node.url, save_as="idp-node")
    handle = wb.connect(node.url)  # the token comes from the saved connection
    assert handle.info()["user"] == "wb-analyst-svc"
    handle.close()
    with pytest.raises(NotAuthenticated, match="discovery"):
        wb.login(provider.url + "/not-the-issuer", client_id="x", client_secret="y")
    with pytest.raises(InvalidQuery, match="https"):
        wb.login("http://idp.example.org", client_id="x", client_secret="y")


# --------------------------------------------------------------------------- refused tokens


@pytest.fixture(scope="module")
def impostor(provider, tmp_path_factory):
    """A second real provider that copies the trusted issuer string but signs with its own key."""
    p = Provider(tmp_path_factory.mktemp("impostor"), issuer=provider.issuer,
                 jwks={"keys": [rsa_jwk("key-impostor")]}).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def other_issuer(tmp_path_factory):
    """A second real provider with its own issuer URL (not trusted by the node)."""
    p = Provider(tmp_path_factory.mktemp("other"), jwks={"keys": [rsa_jwk("key-other")]}).start()
    yield p
    p.stop()


def assert_refused(node, token: str, reason: str | None) -> None:
    response = me(node, token)
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "not_authenticated"
    if reason is not None:
        assert body["details"]["reason"] == reason, body


def test_wrong_issuer(node, other_issuer):
    token = other_issuer.token("wb-owner-svc")
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == AUDIENCE
    assert_refused(node, token, None)  # not our issuer: checked as a node token, which it is not


def test_wrong_audience(provider, node):
    assert_refused(node, provider.token("wb-owner-svc", resource="urn:other-api"), "audience")


def test_expired(provider, node):
    """The provider's 3 s token is refused as expired once its ``exp`` passes (polled, generous deadline)."""
    token = provider.token("wb-short-svc")  # lifetime 3 s; the node's leeway is 0 here
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    deadline = time.monotonic() + 60
    while me(node, token).status_code == 200:
        assert time.monotonic() < deadline, "a token past its exp was still accepted"
        time.sleep(0.2)  # polling the node, not timing it
    assert time.time() >= exp - 1, "refused before it expired"
    assert_refused(node, token, "expired")


def test_unknown_key_id(node, impostor):
    """Same issuer string, valid audience, real provider, but a key the real issuer never published."""
    token = impostor.token("wb-owner-svc")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["iss"] != impostor.url and jwt.get_unverified_header(token)["kid"] == "key-impostor"
    assert_refused(node, token, "unknown_kid")


def test_alg_none(provider, node):
    header, payload, _ = provider.token("wb-analyst-svc").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["wb-owners"]
    for alg in ("none", "None", "NONE"):
        kid = jwt.get_unverified_header(provider.token())["kid"]
        forged = f"{b64({'alg': alg, 'typ': 'at+jwt', 'kid': kid})}.{b64(claims)}."
        assert_refused(node, forged, "algorithm")


def test_hs256_with_the_public_key(provider, node):
    """The provider itself signs HS256 with its RSA public key (PEM) as the secret, under the RSA kid."""
    forged = provider.token("wb-hs256-svc")
    header = jwt.get_unverified_header(forged)
    assert header["alg"] == "HS256" and header["kid"] == "key-2025-a"
    assert_refused(node, forged, "algorithm")
    # ... and the same attack with the JWK's own bytes as the HMAC secret, done by hand.
    jwks = httpx.get(provider.url + "/jwks", timeout=10).json()
    secret = json.dumps(jwks["keys"][0]).encode()
    claims = jwt.decode(forged, options={"verify_signature": False})
    import hashlib
    import hmac

    signing_input = f"{b64({'alg': 'HS256', 'kid': 'key-2025-a'})}.{b64(claims)}"
    sig = b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    assert_refused(node, f"{signing_input}.{sig}", "algorithm")


def test_tampered_payload_and_garbage(provider, node):
    header, payload, sig = provider.token("wb-analyst-svc").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["wb-owners"]
    assert_refused(node, f"{header}.{b64(claims)}.{sig}", "signature")
    claims["iss"] = provider.issuer
    assert_refused(node, f"{header}.{b64(claims)}", None)
    assert_refused(node, "x" * 20_000, None)


def test_refusals_are_audited(node):
    records = audit_records(node)
    reasons = [r["details"]["reason"] for r in records if r["action"] == "auth_failed"]
    assert any("expired" in x for x in reasons) and any("key id" in x for x in reasons)


# --------------------------------------------------------------------------- rotation, mapping, conflicts


@pytest.fixture
def oidc_service(tmp_path):
    """An in-process node service (no HTTP) trusting a provider given later: returns a factory."""
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    services = []

    def make(issuer: str, **overrides):
        config = NodeConfig.load(write_oidc_config(tmp_path / f"n{len(services)}", issuer, **overrides))
        svc = NodeService(config, start_workers=False)
        services.append(svc)
        return svc

    yield make
    for svc in services:
        svc.close()


def test_key_rotation(tmp_path, oidc_service):
    """Counted fetches, no clock: refetch_min 0 lets an unknown kid refetch at once; 3600 never within a test."""
    idp = Provider(tmp_path, jwks={"keys": [rsa_jwk("rot-1")]}).start()
    try:
        authority = oidc_service(idp.issuer, jwks_refetch_min_s=0).authority
        old = idp.token()
        assert authority.verify(old).name == "wb-analyst-svc"
        fetches = authority.oidc.keys.fetches
        assert fetches == 1
        assert authority.verify(idp.token()).name == "wb-analyst-svc"
        assert authority.oidc.keys.fetches == fetches, "known kid: served from the cache"

        idp.restart(jwks={"keys": [rsa_jwk("rot-2")]})  # rot-1 is gone from the provider
        new = idp.token()
        assert jwt.get_unverified_header(new)["kid"] == "rot-2"
        assert authority.verify(new).name == "wb-analyst-svc", "new kid: accepted after one refetch"
        assert authority.oidc.keys.fetches == fetches + 1
        with pytest.raises(NotAuthenticated) as gone:
            authority.verify(old)  # one more refetch (no cooldown here), and rot-1 is not published any more
        assert gone.value.details["reason"] == "unknown_kid"
        assert authority.oidc.keys.fetches == fetches + 2

        # With a cooldown, a flood of made-up key ids fetches nothing more than the first look-up did.
        guarded = oidc_service(idp.issuer, jwks_refetch_min_s=3600).authority
        assert guarded.verify(new).name == "wb-analyst-svc"
        assert guarded.oidc.keys.fetches == 1
        header, payload, sig = new.split(".")
        for i in range(20):
            made_up = f"{b64({'alg': 'RS256', 'kid': f'nope-{i}'})}.{payload}.{sig}"
            with pytest.raises(NotAuthenticated) as refused:
                guarded.verify(made_up)
            assert refused.value.details["reason"] == "unknown_kid"
        assert guarded.oidc.keys.fetches == 1
    finally:
        idp.stop()


def test_purposes_roles_and_role_changes(provider, oidc_service):
    from workbench.node import audit
    from workbench.node.store import User

    svc = oidc_service(provider.issuer)
    analyst = svc.authority.verify(provider.token("wb-analyst-svc"))
    assert (analyst.role, analyst.purposes, analyst.issuer) == ("analyst", ("diabetes study",), provider.issuer)
    owner = svc.authority.verify(provider.token("wb-owner-svc"))
    assert owner.role == "owner" and owner.purposes is None, "'*' leaves purposes unrestricted"

    # The identity provider moves the analysts' group to the auditor role: the row follows at next login.
    from workbench.node.oidc import OIDCVerifier

    svc.authority.oidc = OIDCVerifier(svc.config.oidc.model_copy(update={"role_map": {"wb-analysts": "auditor"}}),
                                      svc.store)
    assert svc.authority.verify(provider.token("wb-analyst-svc")).role == "auditor"
    with svc.store.transaction() as session:
        assert session.query(User).filter_by(name="wb-analyst-svc").one().role == "auditor"
    changes = [r for r in audit.records(svc.store) if r["action"] == "user_role"]
    assert changes and changes[0]["details"]["old_role"] == "analyst"

    # Several mapped groups: role_priority decides; default_role catches unmapped callers.
    v = OIDCVerifier(svc.config.oidc.model_copy(update={"default_role": "analyst"}), svc.store)
    assert v.role_for(("wb-analysts", "wb-owners")) == "owner"
    assert v.role_for(("unrelated",)) == "analyst"


def test_names_cannot_take_over_local_or_disabled_accounts(provider, oidc_service):
    from workbench.node import admin
    from workbench.node.store import User

    svc = oidc_service(provider.issuer)
    admin.add_user(svc.store, svc.authority, "wb-owner-svc", "analyst")  # a local user with the same name
    with pytest.raises(NotAuthorized) as conflict:
        svc.authority.verify(provider.token("wb-owner-svc"))
    assert conflict.value.code == "oidc_user_conflict"
    with svc.store.transaction() as session:
        assert session.query(User).filter_by(name="wb-owner-svc").one().role == "analyst", "local row untouched"

    # A prefix keeps the namespaces apart.
    prefixed = oidc_service(provider.issuer, username_prefix="idp.")
    assert prefixed.authority.verify(provider.token("wb-owner-svc")).name == "idp.wb-owner-svc"

    # The owner disables an OIDC user: locked out whatever the provider says.
    assert svc.authority.verify(provider.token("wb-auditor-svc")).role == "auditor"
    with svc.store.transaction() as session:
        session.query(User).filter_by(name="wb-auditor-svc").one().disabled = True
    with pytest.raises(NotAuthenticated) as disabled:
        svc.authority.verify(provider.token("wb-auditor-svc"))
    assert disabled.value.details["reason"] == "disabled"


def test_username_claim_and_bad_names(provider, oidc_service):
    svc = oidc_service(provider.issuer, username_claim="client_id")
    assert svc.authority.verify(provider.token("wb-analyst-svc")).name == "wb-analyst-svc"
    missing = oidc_service(provider.issuer, username_claim="email")
    with pytest.raises(NotAuthenticated) as err:
        missing.authority.verify(provider.token("wb-analyst-svc"))
    assert err.value.details["reason"] == "claims" and "email" in err.value.message


def test_unreachable_or_mismatched_provider(provider, oidc_service):
    dead = oidc_service(f"http://127.0.0.1:{free_port()}")
    token = provider.token()
    # The token's iss is the real provider, not the dead one: it goes to the node-token path.
    with pytest.raises(NotAuthenticated):
        dead.authority.verify(token)
    with pytest.raises(NotAuthenticated) as err:
        dead.authority.oidc.keys.key_for("key-2025-a")
    assert err.value.details["reason"] == "provider_unreachable"
    # A discovery document that names another issuer is never trusted.
    mismatch = oidc_service(provider.url.replace("127.0.0.1", "localhost"))
    with pytest.raises(NotAuthenticated, match="names issuer"):
        mismatch.authority.oidc.keys.key_for("key-2025-a")


@pytest.mark.parametrize("table, message", [
    ({"algorithms": ["HS256"]}, "never 'none' or an HMAC"),
    ({"algorithms": ["none"]}, "never 'none' or an HMAC"),
    ({"issuer": "http://idp.example.org"}, "plain http"),
    ({"issuer": "workbench-node:hospital-a"}, "node's own issuer"),
    ({"role_map": {"g": "superuser"}}, "role_map"),
])
def test_config_is_checked(tmp_path, table, message):
    from workbench.node.settings import NodeConfig

    path = make_config(tmp_path)
    raw = tomllib.loads(path.read_text())
    raw["oidc"] = {**oidc_table("https://idp.example.org"), **table}
    path.write_text(tomli_w.dumps(raw))
    with pytest.raises(InvalidQuery, match=message) as err:
        NodeConfig.load(path)
    assert err.value.code == "invalid_config"
