"""Authorization code with PKCE (RFC 7636) and a pushed authorization request (PAR, RFC 9126), as FAPI 2.0 asks.

For a person at a kernel with a browser: the client pushes the request to the
provider's PAR endpoint (so nothing of it travels in the browser's URL but an
opaque ``request_uri``), the person signs in on the provider's pages, and the
provider redirects to a one-shot listener on ``http://127.0.0.1:<port>/callback``
(RFC 8252 loopback redirect). The code is exchanged with the PKCE verifier and
a DPoP proof, so the token is bound to the caller's key. ``state`` and the
response's ``iss`` (RFC 9207) are checked; a mismatch is refused.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import webbrowser
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

from ..errors import NotAuthenticated


@dataclass(frozen=True)
class AuthorizationPrompt:
    """What the person opens: the provider's sign-in page for this one request."""

    url: str

    def message(self) -> str:
        return f"To log in, open {self.url}"


class _Callback(BaseHTTPRequestHandler):
    """Takes the one redirect (``/callback?code=...&state=...&iss=...``) and tells the waiting flow."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        if parts.path != "/callback":
            self.send_error(404)
            return
        self.server.result = {k: v[0] for k, v in parse_qs(parts.query).items()}  # type: ignore[attr-defined]
        body = b"Workbench: login complete; you can close this tab."
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.done.set()  # type: ignore[attr-defined]

    def log_message(self, *args) -> None:  # keep the notebook quiet
        return


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def code_flow(doc: dict, client_id: str, scope: str | None, extra: dict, dpop_jkt: str | None,
              push: Callable[[str, dict], dict], redeem: Callable[[dict], dict],
              on_prompt: Callable[[AuthorizationPrompt], None] | None, open_browser: bool, wait_s: float) -> dict:
    """Run the flow; ``push(endpoint, data)`` and ``redeem(data)`` make the authenticated provider calls."""
    server = HTTPServer(("127.0.0.1", 0), _Callback)
    server.done = threading.Event()  # type: ignore[attr-defined]
    server.result = {}  # type: ignore[attr-defined]
    redirect_uri = f"http://127.0.0.1:{server.server_address[1]}/callback"
    verifier, challenge = _pkce()
    state = secrets.token_urlsafe(16)
    request = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "state": state,
               "scope": " ".join(dict.fromkeys(["openid", *(scope or "").split()])),
               "code_challenge": challenge, "code_challenge_method": "S256", **extra,
               **({"dpop_jkt": dpop_jkt} if dpop_jkt else {})}
    thread = threading.Thread(target=_serve_until_done, args=(server,), daemon=True)
    thread.start()
    try:
        pushed = push(doc["pushed_authorization_request_endpoint"], request)
        url = doc["authorization_endpoint"] + "?" + urlencode({"client_id": client_id,
                                                               "request_uri": pushed["request_uri"]})
        prompt = AuthorizationPrompt(url)
        (on_prompt or (lambda p: print(p.message(), flush=True)))(prompt)
        if open_browser:
            webbrowser.open(url)
        if not server.done.wait(wait_s):  # type: ignore[attr-defined]
            raise NotAuthenticated("The login was not completed in time; try again.", code="not_authenticated")
    finally:
        server.done.set()  # type: ignore[attr-defined]
        thread.join(timeout=5)
        server.server_close()
    answer = server.result  # type: ignore[attr-defined]
    _check_answer(answer, state, doc["issuer"])
    return redeem({"grant_type": "authorization_code", "code": answer["code"], "redirect_uri": redirect_uri,
                   "code_verifier": verifier, **extra})


def _serve_until_done(server: HTTPServer) -> None:
    server.timeout = 0.2
    while not server.done.is_set():  # type: ignore[attr-defined]
        server.handle_request()


def _check_answer(answer: dict[str, str], state: str, issuer: str) -> None:
    if answer.get("state") != state:
        raise NotAuthenticated("The login answer's state does not match this login (a forged redirect?).",
                               code="not_authenticated", details={"error": "state_mismatch"})
    if "iss" in answer and answer["iss"] != issuer:
        raise NotAuthenticated(f"The login answer comes from {answer['iss']!r}, not {issuer!r} (mix-up attack?).",
                               code="not_authenticated", details={"error": "issuer_mismatch"})
    if "error" in answer or "code" not in answer:
        error = answer.get("error", "no code")
        raise NotAuthenticated(f"The identity provider refused: {error} ({answer.get('error_description', '')})",
                               code="not_authenticated", details={"error": error})
