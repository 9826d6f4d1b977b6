"""The node half of SMPC secure sums: ``POST /v1/datasets/{name}/smpc/contribute``.

Within one request the node: reads the session from an aggregator its owner
trusts (same checks as HE: a party, at least two parties, the epsilon cap);
charges the analyst's grant through the gate (channel ``smpc``) and computes
its noisy, clamped integer vector in a worker (the same code and plan as HE);
makes a fresh X25519 key pair and posts the public half to the relay; waits
for every party's key; splits its vector into one additive share per party
(:mod:`workbench.channels.secagg.smpc_field`), keeps its own and sends the others, each sealed
to its recipient, through the relay; waits for the shares addressed to it,
opens them, and returns the sum of the shares it holds (its *partial*) to the
analyst.

Privacy guarantee: as :mod:`workbench.channels.secagg.worker` for the noise (the
total is epsilon-DP; ``conservative`` mode makes each node's vector DP on its
own). What leaves the node: ``n - 1`` uniformly random shares, sealed to the
other parties, and a partial sum that contains one share of every party's
vector; neither says anything about this node's vector unless every other
party pools what it holds (see docs/federation.md for collusion). The
identical question (op, mode, epsilon, party set, aggregator) replays the
stored noisy vector, re-shared with fresh randomness, for free.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from workbench.errors import ComputationFailed, InvalidQuery, WorkbenchError
from workbench.channels.secagg.routes import call_aggregator, contribution_task, question, read_session
from workbench.channels.secagg.wire import ContributeRequest, plan
from workbench.node.ledger import Cost
from workbench.node.deps import Caller, Service
from workbench.channels.secagg import smpc_field as field
from workbench.channels.secagg import smpc_sealing as sealing
from workbench.channels.secagg.smpc_wire import SmpcContributeResponse

router = APIRouter(tags=["smpc"])

#: How long a node waits for the other parties' keys and shares.
WAIT_S = 60.0


async def _wait(aggregator: dict, path: str, what: str) -> dict:
    """Poll the relay until nobody is missing; holds no thread while it waits (asyncio sleeps)."""
    deadline = time.monotonic() + WAIT_S
    pause = 0.01
    while True:
        reply = await run_in_threadpool(call_aggregator, aggregator, "GET", path)
        if not reply["waiting_for"]:
            return reply
        if time.monotonic() > deadline:
            raise ComputationFailed(f"Still waiting for {what} from {reply['waiting_for']} after {WAIT_S:g} s.",
                                    code="session_incomplete", details={"waiting_for": reply["waiting_for"]})
        await asyncio.sleep(pause)
        pause = min(pause * 1.5, 0.2)


def _session(service, name: str, body: ContributeRequest, caller):
    """The dataset, the trusted aggregator, the session and its plan (checked; nothing charged)."""
    entry = service.catalog.get(name).require_rows()
    caller.require("analyst", "owner")
    aggregator, spec = read_session(service, entry, caller, body.aggregator_url, body.session_id, "smpc")
    if spec.op.kind == "evaluate":
        raise InvalidQuery("Encrypted model evaluation runs over HE only.", code="invalid_query")
    return entry, aggregator, spec, plan(entry.info, spec.op, len(spec.parties), spec.epsilon, spec.mode)


@router.post("/datasets/{name}/smpc/contribute", response_model=SmpcContributeResponse)
async def contribute(name: str, body: ContributeRequest, service: Service, caller: Caller) -> SmpcContributeResponse:
    """Charge, compute, secret-share this node's noisy vector with the other parties; return its partial sum.

    Within the caller's share of sessions (429 beyond it, before anything is charged); the waits on the other
    parties hold no thread of the node."""
    with service.fair.admit(caller.name, "session"):
        entry, aggregator, spec, enc = await run_in_threadpool(_session, service, name, body, caller)
        task = contribution_task(entry, spec.op.model_dump(mode="json"), enc.model_dump(mode="json"))
        outcome = await service.gate.release_async(
            caller, entry, "smpc", f"secure_{spec.op.kind}", question(spec, aggregator, enc),
            Cost(spec.epsilon, 0.0),
            compute=lambda: service.pool.run("secagg.contribution", task, user=caller.name),
            grant_id=body.grant_id, request_id=body.request_id)
        values = [int(v) for v in outcome.result["values"]]
        partial, sealed = await _exchange(aggregator, spec, body.session_id, values)
    return SmpcContributeResponse(
        dataset=entry.name, dataset_version=outcome.dataset_version or entry.version, session_id=body.session_id,
        release_id=outcome.release_id, replayed=outcome.replayed, epsilon=outcome.cost.epsilon,
        epsilon_charged=outcome.charged.epsilon, grant_id=outcome.grant_id, party=spec.you, partial=partial,
        shares_sent=len(sealed), share_bytes=sum(len(t) for t in sealed.values()))


async def _exchange(aggregator: dict, spec, sid: str, values: list[int]) -> tuple[list[int], dict]:
    """Share ``values`` with the other parties through the relay; the partial sum this node holds."""
    me, length = spec.you, len(values)
    base = f"/sessions/{sid}/smpc"
    try:
        secret, public = sealing.new_key()
        await run_in_threadpool(call_aggregator, aggregator, "POST", f"{base}/key", {"public_key": public})
        keys = (await _wait(aggregator, f"{base}/keys", "public keys"))["keys"]
        shares = field.split(values, len(spec.parties))
        mine = shares[spec.parties.index(me)]
        sealed = {p: sealing.seal(secret, keys[p], sid, me, p, field.to_bytes(s), length)
                  for p, s in zip(spec.parties, shares) if p != me}
        await run_in_threadpool(call_aggregator, aggregator, "POST", f"{base}/shares", {"shares": sealed})
        received = (await _wait(aggregator, f"{base}/inbox", "shares"))["shares"]
        opened = [field.from_bytes(sealing.open_sealed(secret, keys[p], sid, p, me, received[p], length), length)
                  for p in spec.parties if p != me]
    except WorkbenchError as exc:
        raise type(exc)(f"The contribution was charged but the share exchange failed: {exc.message} Asking again "
                        "in a new session with the same parties replays it for free.", code=exc.code,
                        details=exc.details) from None
    except ValueError:
        raise InvalidQuery("A share received for this session is malformed.", code="bad_ciphertext") from None
    return field.add(mine, *opened), sealed
