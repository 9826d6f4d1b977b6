"""Get an access token for a node from your organisation's OpenID Connect provider.

Two ways, both standard OAuth 2.0:

- **Client credentials** (a service account: scripts, scheduled notebooks)::

      tok = wb.login("https://idp.example.org", client_id="wb-analyst-svc",
                     audience="https://hospital-a.example.org/workbench")
      node = wb.connect("https://hospital-a.example.org", token=tok)

  The secret comes from ``client_secret=``, else ``client_secret_file=``, else
  ``$WORKBENCH_OIDC_CLIENT_SECRET``: never from a command line or a notebook cell
  that gets shared.

- **Device authorization** (RFC 8628, a person at a kernel without a browser)::

      tok = wb.login(issuer, client_id="workbench-notebook", device=True, audience=...)
      # prints: open https://idp.../device and enter ABCD-EFGH

  You confirm in any browser; the call polls until the provider answers.

The result is a ``str`` (so ``connect(url, token=tok)`` takes it as it is) that
also carries ``expires_at``, ``scope`` and the token's unverified claims for
display; its ``repr`` never shows the token. With ``save_as=`` and
``node_url=`` it is stored like any node token (a 0600 file, see
:mod:`workbench.config`). Only the node verifies the token; nothing here
trusts its contents.
"""

from __future__ import annotations

import base64
import json
import os
import time
import webbrowser
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

import httpx

from ..config import save_connection
from ..errors import ConnectionFailed, InvalidQuery, NotAuthenticated
from .code_flow import AuthorizationPrompt, code_flow
from .dpop import ALGORITHM, DPoPKey

__all__ = ["AuthorizationPrompt", "DeviceCode", "OIDCToken", "discover", "login"]

SECRET_ENV = "WORKBENCH_OIDC_CLIENT_SECRET"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
MAX_RESPONSE_BYTES = 256 * 1024


class OIDCToken(str):
    """An access token (the string itself) with its expiry and, for display, its unverified claims."""

    expires_at: float | None
    scope: str | None
    issuer: str
    claims: dict[str, Any]
    id_token: str | None

    def __new__(cls, value: str, *, expires_in: float | None, scope: str | None, issuer: str,
                id_token: str | None = None) -> "OIDCToken":
        token = super().__new__(cls, value)
        token.id_token = id_token  # device flow with `openid`: identifies you to the *client*, not to a node
        token.expires_at = time.time() + float(expires_in) if expires_in is not None else None
        token.scope = scope
        token.issuer = issuer
        token.claims = unverified_claims(value)
        return token

    @property
    def access_token(self) -> str:
        return str.__str__(self)

    @property
    def expires_in(self) -> float | None:
        """Seconds left (negative once expired), or None if the provider did not say."""
        return None if self.expires_at is None else self.expires_at - time.time()

    def __repr__(self) -> str:
        who = self.claims.get("sub", "?")
        left = "unknown" if self.expires_in is None else f"{self.expires_in:.0f} s"
        return f"OIDCToken(sub={who!r}, issuer={self.issuer!r}, expires in {left})"


@dataclass(frozen=True)
class DeviceCode:
    """What the person has to do: open ``verification_uri`` and type ``user_code``."""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: float
    interval: float

    def message(self) -> str:
        where = self.verification_uri_complete or self.verification_uri
        return (f"To log in, open {self.verification_uri} and enter the code {self.user_code}"
                + (f"\n(or open {where})" if self.verification_uri_complete else "")
                + f"\nThe code expires in {self.expires_in / 60:.0f} minutes.")


def unverified_claims(token: str) -> dict[str, Any]:
    """A JWT's claims read without any check (for display and choosing a scheme only), else ``{}``."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _json(response: httpx.Response, what: str) -> dict:
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise NotAuthenticated(f"The identity provider's {what} answer is too large.", code="not_authenticated")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise NotAuthenticated(f"The identity provider's {what} answered HTTP {response.status_code} without JSON.",
                               code="not_authenticated")
    return body


def _check_url(url: str, what: str) -> None:
    parts = urlsplit(url)
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise InvalidQuery(f"The {what} must be an https URL (plain http only on loopback), not {url!r}.",
                           code="invalid_query")


def discover(issuer: str, http: httpx.Client) -> dict:
    """The issuer's discovery document (checked to name the same issuer)."""
    _check_url(issuer, "issuer")
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = http.get(url)
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"Cannot reach the identity provider at {url}: {exc}") from None
    doc = _json(response, "discovery document")
    if response.status_code != 200 or doc.get("issuer") != issuer:
        raise NotAuthenticated(f"{url} is not the discovery document of {issuer!r} "
                               f"(HTTP {response.status_code}, issuer {doc.get('issuer')!r}).",
                               code="not_authenticated")
    return doc


def _secret(client_secret: str | None, client_secret_file: str | Path | None) -> str | None:
    if client_secret:
        return client_secret
    if client_secret_file:
        return Path(client_secret_file).expanduser().read_text().strip()
    return os.environ.get(SECRET_ENV) or None


def _token_request(http: httpx.Client, endpoint: str, data: dict, client_id: str, secret: str | None,
                   auth_method: str, dpop_key: DPoPKey | None = None) -> httpx.Response:
    data = dict(data)
    headers = {"Accept": "application/json"}
    if dpop_key is not None:  # RFC 9449: the provider binds the token it issues to this key (cnf.jkt)
        headers["DPoP"] = dpop_key.proof("POST", endpoint)
    if secret is not None and auth_method == "basic":  # RFC 6749 2.3.1: form-encode before Basic
        pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
    else:
        data["client_id"] = client_id
        if secret is not None:
            data["client_secret"] = secret
    try:
        response = http.post(endpoint, data=data, headers=headers)
        nonce = response.headers.get("dpop-nonce")
        if dpop_key is not None and response.status_code in (400, 401) and nonce:  # the provider wants its nonce
            headers["DPoP"] = dpop_key.proof("POST", endpoint, nonce=nonce)
            response = http.post(endpoint, data=data, headers=headers)
        return response
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"Cannot reach the identity provider at {endpoint}: {exc}") from None


def _refused(body: dict, status: int) -> NotAuthenticated:
    error = body.get("error", f"HTTP {status}")
    detail = body.get("error_description")
    return NotAuthenticated(f"The identity provider refused: {error}" + (f" ({detail})" if detail else ""),
                            code="not_authenticated", details={"error": error})


def login(issuer: str, client_id: str, *, client_secret: str | None = None,
          client_secret_file: str | Path | None = None, audience: str | None = None, device: bool = False,
          flow: str | None = None, dpop: bool | None = None, dpop_key: DPoPKey | str | Path | None = None,
          scope: str | None = None, audience_param: str = "resource", auth_method: str = "basic",
          node_url: str | None = None, save_as: str | None = None, open_browser: bool = False,
          on_prompt: Callable[[Any], None] | None = None, timeout: float = 30.0, login_wait_s: float = 600.0,
          http: httpx.Client | None = None) -> OIDCToken:
    """Get an access token from ``issuer`` for ``client_id``.

    ``flow``: ``"client_credentials"`` (the default; needs the secret), ``"device"`` (same as
    ``device=True``), ``"code"`` (authorization code + PKCE + PAR) or ``"interactive"`` (a person:
    ``"code"`` where the provider offers PAR, the device flow otherwise).
    ``dpop``: bind the token to your DPoP key (``dpop_key``, default beside the client config); by
    default on whenever the provider advertises DPoP (FAPI 2.0). ``audience``: the node's ``[oidc]
    audience``, sent as ``resource`` (RFC 8707) or as ``audience_param="audience"``. ``on_prompt``:
    called with the :class:`DeviceCode` or :class:`AuthorizationPrompt` instead of printing it.
    ``save_as`` + ``node_url``: remember the token for ``wb.connect(node_url)``.
    """
    if auth_method not in ("basic", "post"):
        raise InvalidQuery("auth_method is 'basic' or 'post'.", code="invalid_query")
    if (save_as is None) != (node_url is None):
        raise InvalidQuery("Give both save_as= and node_url= to save the token, or neither.", code="invalid_query")
    flow = flow or ("device" if device else "client_credentials")
    if flow not in ("client_credentials", "device", "code", "interactive"):
        raise InvalidQuery("flow is 'client_credentials', 'device', 'code' or 'interactive'.", code="invalid_query")
    secret = _secret(client_secret, client_secret_file)
    own_http = http is None
    http = http or httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False)
    try:
        doc = discover(issuer, http)
        if not isinstance(doc.get("token_endpoint"), str):
            raise NotAuthenticated(f"{issuer} lists no token_endpoint.", code="not_authenticated")
        _check_url(doc["token_endpoint"], "token endpoint")
        offers_dpop = ALGORITHM in (doc.get("dpop_signing_alg_values_supported") or [])
        key = _dpop_key(dpop_key) if (dpop if dpop is not None else offers_dpop) else None
        client = _Client(http, doc, client_id, secret, auth_method, key)
        extra = {audience_param: audience} if audience else {}
        body = _run_flow(client, flow, scope, extra, open_browser, on_prompt, login_wait_s)
    finally:
        if own_http:
            http.close()
    return _token_from(body, issuer, save_as, node_url)


@dataclass(frozen=True)
class _Client:
    """One OAuth client talking to one provider (and its DPoP key, if tokens are to be bound)."""

    http: httpx.Client
    doc: dict
    client_id: str
    secret: str | None
    auth_method: str
    dpop_key: DPoPKey | None

    def post(self, endpoint: str, data: dict, what: str, dpop: bool = False) -> dict:
        response = _token_request(self.http, endpoint, data, self.client_id, self.secret, self.auth_method,
                                  self.dpop_key if dpop else None)
        body = _json(response, what)
        if response.status_code not in (200, 201):
            raise _refused(body, response.status_code)
        return body


def _dpop_key(given: DPoPKey | str | Path | None) -> DPoPKey:
    return given if isinstance(given, DPoPKey) else DPoPKey.load_or_create(given)


def _run_flow(client: _Client, flow: str, scope: str | None, extra: dict, open_browser: bool,
              on_prompt: Callable[[Any], None] | None, wait_s: float) -> dict:
    if flow == "interactive":
        flow = "code" if isinstance(client.doc.get("pushed_authorization_request_endpoint"), str) else "device"
    if flow == "device":
        return _device_flow(client, scope, extra, open_browser, on_prompt)
    if flow == "code":
        for name in ("pushed_authorization_request_endpoint", "authorization_endpoint"):
            if not isinstance(client.doc.get(name), str):
                raise NotAuthenticated(f"{client.doc.get('issuer')} lists no {name}.", code="not_authenticated")
            _check_url(client.doc[name], name.replace("_", " "))
        jkt = client.dpop_key.thumbprint if client.dpop_key is not None else None
        return code_flow(client.doc, client.client_id, scope, extra, jkt,
                         push=lambda endpoint, data: client.post(endpoint, data, "PAR endpoint"),
                         redeem=lambda data: client.post(client.doc["token_endpoint"], data, "token endpoint", True),
                         on_prompt=on_prompt, open_browser=open_browser, wait_s=wait_s)
    if client.secret is None:
        raise InvalidQuery(f"The client-credentials flow needs the client's secret: pass client_secret= or "
                           f"client_secret_file=, or set ${SECRET_ENV}.", code="invalid_query")
    data = {"grant_type": "client_credentials", **extra, **({"scope": scope} if scope else {})}
    return client.post(client.doc["token_endpoint"], data, "token endpoint", dpop=True)


def _token_from(body: dict, issuer: str, save_as: str | None, node_url: str | None) -> OIDCToken:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise NotAuthenticated("The identity provider answered without an access token.", code="not_authenticated")
    id_token = body.get("id_token") if isinstance(body.get("id_token"), str) else None
    token = OIDCToken(access, expires_in=body.get("expires_in"), scope=body.get("scope"), issuer=issuer,
                      id_token=id_token)
    if save_as is not None and node_url is not None:
        save_connection(save_as, node_url, token.access_token)
    return token


def _device_flow(client: _Client, scope: str | None, extra: dict, open_browser: bool,
                 on_prompt: Callable[[DeviceCode], None] | None) -> dict:
    http, doc, client_id, secret, auth_method = (client.http, client.doc, client.client_id, client.secret,
                                                 client.auth_method)
    endpoint = doc.get("device_authorization_endpoint")
    if not isinstance(endpoint, str):
        raise NotAuthenticated(f"{doc.get('issuer')} does not offer the device authorization flow.",
                               code="not_authenticated")
    _check_url(endpoint, "device authorization endpoint")
    scopes = " ".join(dict.fromkeys(["openid", *(scope or "").split()]))
    response = _token_request(http, endpoint, {"scope": scopes, **extra}, client_id, secret, auth_method)
    start = _json(response, "device authorization endpoint")
    if response.status_code != 200:
        raise _refused(start, response.status_code)
    try:
        code = DeviceCode(user_code=str(start["user_code"]), verification_uri=str(start["verification_uri"]),
                          verification_uri_complete=start.get("verification_uri_complete"),
                          expires_in=float(start.get("expires_in", 600)), interval=float(start.get("interval", 5)))
        device_code = str(start["device_code"])
    except (KeyError, TypeError, ValueError):
        raise NotAuthenticated("The identity provider's device authorization answer is incomplete.",
                               code="not_authenticated") from None
    if on_prompt is not None:
        on_prompt(code)
    else:
        print(code.message(), flush=True)
    if open_browser:
        webbrowser.open(code.verification_uri_complete or code.verification_uri)
    interval = max(code.interval, 1.0)
    deadline = time.monotonic() + code.expires_in
    while True:
        response = _token_request(http, doc["token_endpoint"], {"grant_type": DEVICE_GRANT, "device_code": device_code},
                                  client_id, secret, auth_method, client.dpop_key)
        body = _json(response, "token endpoint")
        if response.status_code == 200:
            return body
        error = body.get("error")
        if error == "slow_down":
            interval += 5
        elif error != "authorization_pending":
            raise _refused(body, response.status_code)
        if time.monotonic() + interval > deadline:
            raise NotAuthenticated("The device code expired before the login was confirmed; try again.",
                                   code="not_authenticated", details={"error": "expired_token"})
        time.sleep(interval)
