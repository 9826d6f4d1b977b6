"""The node half of secure aggregation: trusted aggregators, preview, and contribute.

``POST /datasets/{name}/he/contribute`` (analyst): the node reads the session
(op, epsilon, noise mode, parties, public context) from an aggregator its owner
trusts, vets the context in a worker, charges the analyst's grant through the
gate (channel ``he``), computes its noisy contribution in a worker, encrypts it
under the analyst's public key and sends the ciphertext *to the aggregator*.
The analyst's response names the release and the ciphertext's hash, never a
value or a ciphertext. For an ``evaluate`` session the node also vets the
analyst's weight ciphertexts before charging, and sends the encrypted
aggregate metric (:mod:`workbench.channels.secagg.he_evaluate`) instead of its vector.

Privacy guarantee: see :mod:`workbench.channels.secagg.worker`. The contribution is
charged (epsilon, 0) before it is computed; the identical question (same op,
mode, epsilon, party set and aggregator) replays the stored noisy values,
re-encrypted under the new session's key, for free, so repeating a session
reveals nothing new.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import httpx
from fastapi import APIRouter

from workbench.errors import ComputationFailed, InvalidQuery, NotAuthorized, NotFound, WorkbenchError
from workbench.node import policy
from workbench.node.catalog import DatasetEntry
from workbench.node.data import task_payload
from workbench.node.ledger import Cost, choose_grant
from workbench.node.deps import Caller, Service
from workbench.node.service import NodeService
from workbench.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from workbench.wire import raise_for_error, send
from workbench.channels.secagg.he_params import EVAL_SCHEME, SCHEME, eval_params_doc, params_doc
from workbench.channels.secagg.wire import (AggregatorEntry, ContributeRequest, ContributeResponse, HEPreview, HEPreviewRequest, SessionSpec,
                   plan)

router = APIRouter(tags=["he"])
MIN_PARTIES = 2
_lock = threading.Lock()


# ---------------------------------------------------------------- trusted aggregators (owner-managed)


def _trust_file(service: NodeService) -> Path:
    return service.config.node.state_dir / "he_aggregators.json"


def trusted(service: NodeService) -> dict[str, dict]:
    path = _trust_file(service)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save(service: NodeService, entries: dict) -> None:
    path = _trust_file(service)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(entries, fh)
    os.replace(tmp, path)


@router.get("/he/aggregators")
def list_aggregators(service: Service, caller: Caller) -> dict:
    """The aggregators this node's owner trusts (URLs only), and the pinned HE parameters."""
    return {"aggregators": [{"name": n, "url": e["url"]} for n, e in sorted(trusted(service).items())],
            "params": params_doc(), "eval_params": eval_params_doc(), "protocols": ["he", "smpc"],
            "min_parties": MIN_PARTIES}


@router.put("/he/aggregators/{name}")
def put_aggregator(name: str, body: AggregatorEntry, service: Service, caller: Caller) -> dict:
    """Owner only: trust an aggregator (its URL, and the token this node presents to it)."""
    caller.require("owner")
    if not name.replace("-", "").replace("_", "").isalnum() or len(name) > 64:
        raise InvalidQuery("Aggregator names are letters, digits, '-' and '_'.", code="invalid_query")
    with _lock:
        entries = trusted(service)
        entries[name] = {"url": body.url.rstrip("/"), "token": body.token}
        _save(service, entries)
    from workbench.node import audit

    with service.store.transaction() as session:
        audit.append(session, caller.name, "he_aggregator_trusted", None, name=name, url=body.url.rstrip("/"))
    return {"name": name, "url": body.url.rstrip("/")}


@router.delete("/he/aggregators/{name}")
def delete_aggregator(name: str, service: Service, caller: Caller) -> dict:
    """Owner only: stop trusting an aggregator."""
    caller.require("owner")
    with _lock:
        entries = trusted(service)
        if entries.pop(name, None) is None:
            raise NotFound(f"No trusted aggregator named {name!r}.", code="not_found")
        _save(service, entries)
    return {"removed": name}


def _aggregator_for(service: NodeService, url: str) -> dict:
    url = url.rstrip("/")
    for entry in trusted(service).values():
        if entry["url"] == url:
            return entry
    raise NotAuthorized(f"This node does not trust the aggregator at {url[:100]}; its owner must add it "
                        "(PUT /v1/he/aggregators/NAME).", code="untrusted_aggregator")


def call_aggregator(entry: dict, method: str, path: str, json_body: dict | None = None) -> dict:
    """One call from this node to a trusted aggregator (HE and SMPC sessions); its errors relayed as ours."""
    headers = {"Authorization": f"Bearer {entry['token']}", PROTOCOL_HEADER: PROTOCOL_VERSION}
    with httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0)) as http:
        response = send(http, method, entry["url"] + "/v1" + path, who="aggregator", where=entry["url"],
                        json=json_body, headers=headers)
    raise_for_error(response, "aggregator", prefix="Aggregator: ", max_message=300, details=False,
                    unreadable=ComputationFailed, unreadable_code="computation_failed")
    try:
        return response.json()
    except ValueError:
        raise ComputationFailed("The aggregator's answer is not JSON.") from None


# ---------------------------------------------------------------- preview and contribute


def contribution_task(entry: DatasetEntry, op: dict, enc: dict) -> dict:
    """The worker task of a noisy contribution (task ``secagg.contribution``), for either protocol."""
    return task_payload(entry, op=op, plan=enc)


@router.post("/datasets/{name}/he/preview", response_model=HEPreview)
def he_preview(name: str, body: HEPreviewRequest, service: Service, caller: Caller) -> HEPreview:
    """The encoding, noise scales and price of a secure-aggregation contribution. Spends nothing."""
    entry = service.catalog.get(name).require_rows()
    caller.require("analyst", "owner")
    policy.check_loss(service, body.epsilon)
    enc = plan(entry.info, body.op, body.parties, body.epsilon, body.mode)
    left = grant_id = None
    if entry.info.tier == "private":
        with service.store.transaction() as session:
            grant = choose_grant(session, caller.name, entry.name, body.grant_id)
            grant_id, left = grant.id, max(grant.epsilon - grant.epsilon_spent, 0.0)
    return HEPreview(dataset=entry.name, dataset_version=entry.version, epsilon=body.epsilon, grant_id=grant_id,
                     epsilon_left_before=left, slots=enc.slots, decimals=enc.decimals, noise_scale=enc.noise_scale,
                     max_abs_per_node=enc.max_abs_per_node, params=params_doc())


def read_session(service: NodeService, entry: DatasetEntry, caller, aggregator_url: str, session_id: str,
                 protocol: str) -> tuple[dict, SessionSpec]:
    """The trusted aggregator's description of a session this node is a party of (checked, nothing charged)."""
    try:
        aggregator = _aggregator_for(service, aggregator_url)
    except WorkbenchError as exc:
        service.gate.refuse(caller, entry.name, exc, channel=protocol, attempted="contribute")
        raise
    try:
        spec = SessionSpec.model_validate(call_aggregator(aggregator, "GET", f"/sessions/{session_id}"))
    except ValueError:
        raise ComputationFailed("The aggregator's session description is malformed.") from None
    if spec.protocol != protocol:
        raise InvalidQuery(f"That session uses protocol {spec.protocol!r}; ask this node's "
                           f"/{spec.protocol}/contribute endpoint.", code="invalid_query")
    if spec.dataset != entry.name:
        raise InvalidQuery(f"The session is about dataset {spec.dataset!r}, not {entry.name!r}.",
                           code="invalid_query")
    if spec.you not in spec.parties or len(set(spec.parties)) != len(spec.parties):
        raise InvalidQuery("This node is not a party of that session.", code="invalid_query")
    if len(spec.parties) < MIN_PARTIES:
        raise NotAuthorized(f"A secure sum needs at least {MIN_PARTIES} parties, so no single node's value can be "
                            "decrypted.", code="privacy_violation")
    policy.check_loss(service, spec.epsilon)
    return aggregator, spec


def question(spec: SessionSpec, aggregator: dict, enc) -> dict:
    """The identity of a contribution for the gate (replay): never the key, the weights or the session."""
    return {"op": spec.op.model_dump(mode="json"), "mode": spec.mode, "parties": sorted(spec.parties),
            "aggregator": aggregator["url"], "plan": enc.model_dump(mode="json")}


@router.post("/datasets/{name}/he/contribute", response_model=ContributeResponse)
def contribute(name: str, body: ContributeRequest, service: Service, caller: Caller) -> ContributeResponse:
    """Charge, compute, encrypt and send this node's noisy contribution to the session's aggregator (within the
    caller's share of sessions: 429 beyond it, before anything is charged)."""
    with service.fair.admit(caller.name, "session"):
        return _contribute(name, body, service, caller)


def _contribute(name: str, body: ContributeRequest, service: NodeService, caller) -> ContributeResponse:
    entry = service.catalog.get(name).require_rows()
    caller.require("analyst", "owner")
    aggregator, spec = read_session(service, entry, caller, body.aggregator_url, body.session_id, "he")
    enc = plan(entry.info, spec.op, len(spec.parties), spec.epsilon, spec.mode)
    evaluate = spec.op.kind == "evaluate"
    scheme = EVAL_SCHEME if evaluate else SCHEME
    user = caller.name
    checked = service.pool.run("secagg.check_context", {"context": spec.context, "scheme": scheme}, user=user)
    if checked["context_sha256"] != spec.context_sha256:
        raise InvalidQuery("The session's context does not match its hash.", code="bad_context")
    if evaluate:  # vet the analyst's weight ciphertexts before anything is charged
        service.pool.run("secagg.check_weights",
                         {"context": spec.context, "weights": spec.weights, "moments": len(enc.slots)}, user=user)
    op = spec.op.model_dump(mode="json")
    task = contribution_task(entry, op, enc.model_dump(mode="json"))
    outcome = service.gate.release(
        caller, entry, "he", f"secure_{spec.op.kind}", question(spec, aggregator, enc), Cost(spec.epsilon, 0.0),
        compute=lambda: service.pool.run("secagg.contribution", task, user=user),
        grant_id=body.grant_id, request_id=body.request_id)
    # Charged above; only now is the (noisy) contribution encrypted and released, to the aggregator only.
    if evaluate:
        sealed = service.pool.run("secagg.evaluate", {
            "context": spec.context, "weights": spec.weights, "moments": len(enc.slots),
            "values": outcome.result["values"], "decimals": enc.decimals, "max_rows": entry.info.max_rows}, user=user)
    else:
        sealed = service.pool.run("secagg.encrypt",
                                  {"context": spec.context, "values": outcome.result["values"]}, user=user)
    try:
        call_aggregator(aggregator, "POST", f"/sessions/{body.session_id}/contributions", {"ciphertext": sealed["ciphertext"]})
    except WorkbenchError as exc:
        raise ComputationFailed(f"The contribution was charged but the aggregator refused it ({exc.code}); "
                                "asking again in a new session with the same parties replays it for free.",
                                code="computation_failed") from None
    return ContributeResponse(dataset=entry.name, dataset_version=outcome.dataset_version or entry.version, session_id=body.session_id,
                              release_id=outcome.release_id, replayed=outcome.replayed, epsilon=outcome.cost.epsilon,
                              epsilon_charged=outcome.charged.epsilon, grant_id=outcome.grant_id,
                              ciphertext_sha256=sealed["sha256"], ciphertext_bytes=sealed["bytes"])
