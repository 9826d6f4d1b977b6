"""The aggregator's mailbox for SMPC sessions: public keys in, sealed shares through. It cannot open them.

Routes (nodes authenticate with their aggregator token, as for HE):

* ``POST /v1/sessions/{id}/smpc/key``: this node's ephemeral X25519 public key (once per session).
* ``GET  /v1/sessions/{id}/smpc/keys``: every party's key posted so far.
* ``POST /v1/sessions/{id}/smpc/shares``: this node's shares, one per *other* party, each sealed to it
  (once per session; the node keeps its own share).
* ``GET  /v1/sessions/{id}/smpc/inbox``: the sealed shares addressed to this node.
* ``POST /v1/sessions/{id}/abort`` (result token): the analyst calls the session off; waiting nodes stop.

The partial sums never pass through here: each node returns its own to the
analyst. So the relay alone never holds anything but public keys and
ciphertexts; see docs/federation.md for who must not collude with whom.
"""

from __future__ import annotations


from fastapi import APIRouter, Request

from ..errors import InvalidQuery, NotAuthorized, PayloadTooLarge
from ..channels.secagg.smpc_wire import MAX_SEALED, PublicKey, SealedShares

router = APIRouter(tags=["smpc"])


def _session(request: Request, session_id: str):
    agg = request.app.state.aggregator
    node = agg.node_for(request)
    session = agg.get(session_id)
    if node not in session.spec.parties:
        raise NotAuthorized("This node is not a party of that session.", code="not_authorized")
    if session.spec.protocol != "smpc":
        raise InvalidQuery("This is not an SMPC session.", code="invalid_query")
    if session.aborted:
        raise InvalidQuery("The analyst aborted this session.", code="session_closed")
    return agg, node, session


@router.post("/sessions/{session_id}/smpc/key")
def post_key(session_id: str, body: PublicKey, request: Request) -> dict:
    agg, node, session = _session(request, session_id)
    with session.lock:
        known = session.keys.get(node)
        if known is not None and known != body.public_key:
            raise InvalidQuery("This node already posted a different key for this session.", code="session_closed")
        session.keys[node] = body.public_key
    agg.bytes_in += len(body.public_key)
    return {"received": sorted(session.keys)}


@router.get("/sessions/{session_id}/smpc/keys")
def get_keys(session_id: str, request: Request) -> dict:
    agg, _node, session = _session(request, session_id)
    keys = dict(session.keys)
    agg.bytes_out += sum(len(k) for k in keys.values())
    return {"keys": keys, "waiting_for": [p for p in session.spec.parties if p not in keys]}


@router.post("/sessions/{session_id}/smpc/shares")
def post_shares(session_id: str, body: SealedShares, request: Request) -> dict:
    agg, node, session = _session(request, session_id)
    others = [p for p in session.spec.parties if p != node]
    if sorted(body.shares) != sorted(others):
        raise InvalidQuery("Send exactly one sealed share to every other party.", code="invalid_query")
    for text in body.shares.values():
        if len(text) > MAX_SEALED:
            raise PayloadTooLarge("A sealed share is too large.", code="payload_too_large")
    with session.lock:
        if any(node in session.mailboxes.get(p, {}) for p in others):
            raise InvalidQuery("This node already sent its shares for this session.", code="session_closed")
        for recipient, text in body.shares.items():
            session.mailboxes.setdefault(recipient, {})[node] = text
    agg.bytes_in += sum(len(t) for t in body.shares.values())
    return {"sent_to": sorted(body.shares)}


@router.get("/sessions/{session_id}/smpc/inbox")
def inbox(session_id: str, request: Request) -> dict:
    agg, node, session = _session(request, session_id)
    box = dict(session.mailboxes.get(node, {}))
    agg.bytes_out += sum(len(t) for t in box.values())
    return {"shares": box, "waiting_for": [p for p in session.spec.parties if p != node and p not in box]}


@router.post("/sessions/{session_id}/abort")
def abort(session_id: str, request: Request) -> dict:
    agg = request.app.state.aggregator
    session = agg.get(session_id)
    agg.check_result_token(session, request.headers.get("x-result-token"))
    session.aborted = True
    session.mailboxes.clear()
    return {"aborted": session_id}
