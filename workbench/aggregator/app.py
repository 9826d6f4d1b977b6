"""The aggregator: adds the nodes' ciphertexts, never holds a key that decrypts them.

``workbench aggregator serve --state DIR`` runs this small FastAPI app. Its
registry (``DIR/nodes.json``: node name → sha256 of the node's token, made by
``workbench aggregator add-node``) says which nodes may contribute.

* ``POST /v1/sessions`` (analyst): op, epsilon, noise mode, parties and the
  *public* context (vetted in a worker: no secret key, no galois keys, pinned
  parameters). Returns a session id and a result token (a capability).
* ``GET /v1/sessions/{id}`` (a party node): the session description.
* ``POST /v1/sessions/{id}/contributions`` (a party node): its ciphertext,
  vetted in a worker; a node may resend until the result exists.
* ``GET /v1/sessions/{id}/result`` (result token): once *every* party has
  contributed, the sum of their ciphertexts. There is no endpoint that returns
  one party's ciphertext, and a session needs at least two parties.
* Encrypted model evaluation (``op.kind == "evaluate"``): the session also
  carries the analyst's weight ciphertexts (CKKS, one per moment), vetted here
  and handed to the parties with the session description.
* SMPC sessions (``protocol == "smpc"``, no context): the aggregator only
  relays the nodes' ephemeral public keys and their *encrypted* shares (routes
  in :mod:`workbench.aggregator.relay`); the partial sums go from each node to the
  analyst, never through here.

The aggregator sees ciphertexts only; it cannot decrypt them (the secret key
stays in the analyst's kernel). It must not collude with the analyst: if it
handed one node's ciphertext to the key holder, that node's partial (with only
its own noise share) would be exposed. Sessions live in memory for an hour.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request

from .._version import __version__
from ..errors import ComputationFailed, InvalidQuery, NotAuthenticated, NotAuthorized, NotFound, PayloadTooLarge
from ..node.api_docs import add_offline_docs
from ..node.app import BodyLimit, install_error_handlers
from ..node.worker import WorkerPool
from ..channels.secagg.he_params import (EVAL_MAX_CONTEXT_BYTES, EVAL_SCHEME, MAX_CIPHERTEXT_BYTES, MAX_CONTEXT_BYTES, SCHEME,
                     eval_params_doc, params_doc)
from ..channels.secagg.wire import (MAX_EVAL_MOMENTS, Contribution, SessionCreate, SessionCreated, SessionResult, SessionSpec,
                   eval_monomials)

log = logging.getLogger(__name__)

SESSION_TTL_S = 3600.0
MAX_SESSIONS = 200
MIN_PARTIES = 2
MAX_BODY = 800_000
#: Opening a session may be larger: an evaluation carries a context and one ~313 KB (base64) weight
#: ciphertext per moment. Every field is capped again before it is decoded.
MAX_SESSION_BODY = 600_000 + MAX_EVAL_MOMENTS * 410_000
EVAL_LENGTH = 2


class _Limits:
    """Body caps by route: ``POST /v1/sessions`` may carry weights; everything else stays small."""

    def __init__(self, app):
        self.small = BodyLimit(app, limit=MAX_BODY)
        self.large = BodyLimit(app, limit=MAX_SESSION_BODY)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("path") == "/v1/sessions":
            return await self.large(scope, receive, send)
        return await self.small(scope, receive, send)


# ---------------------------------------------------------------- registry of nodes


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def registry_path(state: Path) -> Path:
    return Path(state) / "nodes.json"


def load_registry(state: Path) -> dict[str, str]:
    path = registry_path(state)
    return json.loads(path.read_text()) if path.exists() else {}


def add_node(state: Path, name: str) -> str:
    """Register a node (or rotate its token); returns the token to give that node's owner, shown once."""
    import os

    if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
        raise InvalidQuery("Node names are letters, digits, '-' and '_'.", code="invalid_query")
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    registry = load_registry(state)
    token = secrets.token_urlsafe(32)
    registry[name] = _hash(token)
    tmp = registry_path(state).with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(registry, fh)
    os.replace(tmp, registry_path(state))
    return token


# ---------------------------------------------------------------- sessions


@dataclass
class Session:
    session_id: str
    result_hash: str
    spec: SessionCreate
    context_sha256: str
    length: int
    created: float = field(default_factory=time.monotonic)
    contributions: dict[str, str] = field(default_factory=dict)
    result: SessionResult | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    scheme: str = "bfv"
    # SMPC relay state (workbench.aggregator.relay): public keys and sealed shares by recipient, then sender.
    keys: dict[str, str] = field(default_factory=dict)
    mailboxes: dict[str, dict[str, str]] = field(default_factory=dict)
    aborted: bool = False


class Aggregator:
    def __init__(self, state: Path, name: str = "aggregator", min_parties: int = MIN_PARTIES, workers: int = 1):
        self.state = Path(state)
        self.name = name
        self.min_parties = max(MIN_PARTIES, min_parties)
        self.pool = WorkerPool(workers, 120.0)
        self.sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0

    def node_for(self, request: Request) -> str:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise NotAuthenticated("Nodes send their aggregator token as a bearer token.", code="not_authenticated")
        digest = _hash(token.strip())
        for name, known in load_registry(self.state).items():
            if hmac.compare_digest(known, digest):
                return name
        raise NotAuthenticated("Unknown node token.", code="not_authenticated")

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self.sessions.items() if now - v.created > SESSION_TTL_S]:
            del self.sessions[sid]

    def get(self, session_id: str) -> Session:
        with self._lock:
            self._expire()
            session = self.sessions.get(session_id)
        if session is None:
            raise NotFound("No such session (unknown or expired).", code="not_found")
        return session

    def create(self, body: SessionCreate) -> SessionCreated:
        from ..channels.secagg.wire import linreg_slots

        registry = load_registry(self.state)
        parties = list(body.parties)
        if len(set(parties)) != len(parties):
            raise InvalidQuery("Parties must be distinct.", code="invalid_query")
        unknown = [p for p in parties if p not in registry]
        if unknown:
            raise InvalidQuery(f"Not registered at this aggregator: {unknown}.", code="invalid_query")
        if len(parties) < self.min_parties:
            raise NotAuthorized(f"A session needs at least {self.min_parties} parties, so no single node's value "
                                "can be decrypted.", code="privacy_violation")
        op = body.op
        scheme = EVAL_SCHEME if op.kind == "evaluate" else SCHEME
        if op.kind == "sum":
            length = len(op.columns) + (1 if op.count else 0)
        elif op.kind == "linreg":
            length = len(linreg_slots(op.x, op.y or ""))
        else:
            length = EVAL_LENGTH
        if length < 1:
            raise InvalidQuery("The op has no slots.", code="invalid_query")
        if op.kind != "evaluate" and body.weights:
            raise InvalidQuery("Only an 'evaluate' session carries weights.", code="invalid_query")
        if body.protocol == "smpc":
            if op.kind == "evaluate" or body.context:
                raise InvalidQuery("An SMPC session carries no context and no weights (secure sums and "
                                   "regression only).", code="invalid_query")
            context_sha = ""
        else:
            cap = MAX_CONTEXT_BYTES if scheme == SCHEME else EVAL_MAX_CONTEXT_BYTES
            if len(body.context) > (cap * 4) // 3 + 8:
                raise PayloadTooLarge(f"The context is larger than {cap} bytes.", code="payload_too_large")
            context_sha = self.pool.run("secagg.check_context",
                                        {"context": body.context, "scheme": scheme})["context_sha256"]
        if op.kind == "evaluate":
            needed = len(eval_monomials(op))
            if len(body.weights) != needed:
                raise InvalidQuery(f"This evaluation needs {needed} weight ciphertexts (one per moment), "
                                   f"not {len(body.weights)}.", code="bad_ciphertext")
            for text in body.weights:
                if len(text) > (MAX_CIPHERTEXT_BYTES * 4) // 3 + 8:
                    raise PayloadTooLarge(f"A weight ciphertext is larger than {MAX_CIPHERTEXT_BYTES} bytes.",
                                          code="payload_too_large")
            self.pool.run("secagg.check_weights", {"context": body.context, "weights": body.weights,
                                                                   "moments": needed})
        session_id = secrets.token_urlsafe(24)
        token = secrets.token_urlsafe(32)
        session = Session(session_id, _hash(token), body, context_sha, length, scheme=scheme)
        with self._lock:
            self._expire()
            if len(self.sessions) >= MAX_SESSIONS:
                raise ComputationFailed("The aggregator has too many open sessions; try again later.",
                                        code="computation_failed")
            self.sessions[session_id] = session
        self.bytes_in += len(body.context) + sum(len(w) for w in body.weights)
        return SessionCreated(session_id=session_id, result_token=token, aggregator=self.name, parties=parties,
                              context_sha256=context_sha, expires_in_s=SESSION_TTL_S)

    def spec(self, session_id: str, node: str) -> SessionSpec:
        session = self.get(session_id)
        if node not in session.spec.parties:
            raise NotAuthorized("This node is not a party of that session.", code="not_authorized")
        s = session.spec
        self.bytes_out += len(s.context) + sum(len(w) for w in s.weights)
        return SessionSpec(session_id=session_id, aggregator=self.name, dataset=s.dataset, op=s.op,
                           epsilon=s.epsilon, mode=s.mode, parties=s.parties, you=node, context=s.context,
                           context_sha256=session.context_sha256, protocol=s.protocol, weights=s.weights)

    def contribute(self, session_id: str, node: str, body: Contribution) -> dict:
        session = self.get(session_id)
        if node not in session.spec.parties:
            raise NotAuthorized("This node is not a party of that session.", code="not_authorized")
        if session.spec.protocol != "he":
            raise InvalidQuery("This is an SMPC session: it takes shares, not ciphertexts.", code="invalid_query")
        if len(body.ciphertext) > (MAX_CIPHERTEXT_BYTES * 4) // 3 + 8:
            raise PayloadTooLarge(f"The ciphertext is larger than {MAX_CIPHERTEXT_BYTES} bytes.",
                                  code="payload_too_large")
        checked = self.pool.run("secagg.check_ciphertext",
                                {"context": session.spec.context, "ciphertext": body.ciphertext,
                                 "length": session.length, "scheme": session.scheme})
        with session.lock:
            if session.result is not None:
                raise InvalidQuery("This session's total was already computed; start a new session.",
                                   code="session_closed")
            session.contributions[node] = body.ciphertext
        self.bytes_in += len(body.ciphertext)
        return {"session_id": session_id, "party": node, "sha256": checked["sha256"],
                "received": sorted(session.contributions), "waiting_for": self._waiting(session)}

    @staticmethod
    def _waiting(session: Session) -> list[str]:
        return [p for p in session.spec.parties if p not in session.contributions]

    @staticmethod
    def check_result_token(session: Session, token: str | None) -> None:
        """Refuse anyone but the analyst who opened ``session`` (the result token is their capability)."""
        if not token or not hmac.compare_digest(_hash(token), session.result_hash):
            raise NotAuthorized("The result token does not match this session.", code="not_authorized")

    def result(self, session_id: str, token: str | None) -> SessionResult:
        session = self.get(session_id)
        self.check_result_token(session, token)
        if session.spec.protocol != "he":
            raise InvalidQuery("An SMPC session has no result here: the nodes' partial sums go to the analyst.",
                               code="invalid_query")
        with session.lock:
            if session.result is None:
                waiting = self._waiting(session)
                if waiting:
                    raise ComputationFailed(f"Still waiting for contributions from {waiting}.",
                                            code="session_incomplete", details={"waiting_for": waiting})
                total = self.pool.run("secagg.add", {
                    "context": session.spec.context, "length": session.length, "scheme": session.scheme,
                    "ciphertexts": [session.contributions[p] for p in session.spec.parties]})
                session.result = SessionResult(session_id=session_id, parties=session.spec.parties,
                                               ciphertext=total["ciphertext"], sha256=total["sha256"],
                                               bytes=total["bytes"])
                session.contributions.clear()
        self.bytes_out += len(session.result.ciphertext)
        return session.result

    def close(self) -> None:
        self.pool.close()


# ---------------------------------------------------------------- the app


def _aggregator_of(request: Request) -> Aggregator:
    return request.app.state.aggregator


Agg = Annotated[Aggregator, Depends(_aggregator_of)]


def create_aggregator_app(aggregator: Aggregator) -> FastAPI:
    app = FastAPI(title=f"Workbench aggregator: {aggregator.name}", version=__version__,
                  description="Adds encrypted contributions from Workbench nodes; holds no decryption key.",
                  openapi_url="/v1/openapi.json", docs_url=None, redoc_url=None)
    add_offline_docs(app, f"Workbench aggregator {aggregator.name}")
    app.state.aggregator = aggregator
    router = APIRouter(prefix="/v1")

    install_error_handlers(app, "The aggregator hit an internal error.")

    @router.get("/health")
    def health(a: Agg) -> dict:
        return {"status": "ok", "aggregator": a.name, "sessions": len(a.sessions)}

    @router.get("/info")
    def info(a: Agg) -> dict:
        """Name, pinned HE parameters, registered parties, minimum parties per session."""
        return {"name": a.name, "version": __version__, "params": params_doc(), "eval_params": eval_params_doc(),
                "protocols": ["he", "smpc"], "min_parties": a.min_parties, "parties": sorted(load_registry(a.state))}

    @router.post("/sessions", response_model=SessionCreated)
    def create(body: SessionCreate, a: Agg) -> SessionCreated:
        return a.create(body)

    @router.get("/sessions/{session_id}", response_model=SessionSpec)
    def spec(session_id: str, request: Request, a: Agg) -> SessionSpec:
        return a.spec(session_id, a.node_for(request))

    @router.post("/sessions/{session_id}/contributions")
    def contribution(session_id: str, body: Contribution, request: Request, a: Agg) -> dict:
        return a.contribute(session_id, a.node_for(request), body)

    @router.get("/sessions/{session_id}/result", response_model=SessionResult)
    def result(session_id: str, request: Request, a: Agg) -> SessionResult:
        return a.result(session_id, request.headers.get("x-result-token"))

    from .relay import router as smpc_router

    app.include_router(router)
    app.include_router(smpc_router, prefix="/v1")
    app.add_middleware(_Limits)
    return app


def serve(state: Path, host: str = "127.0.0.1", port: int = 8780, name: str = "aggregator",
          min_parties: int = MIN_PARTIES) -> None:
    """Run the aggregator (blocking)."""
    import uvicorn

    aggregator = Aggregator(state, name=name, min_parties=min_parties)
    try:
        uvicorn.run(create_aggregator_app(aggregator), host=host, port=port, log_level="warning", ws="none")
    finally:
        aggregator.close()
