"""HTTP endpoints of the federated-learning channel on a node (under ``/v1``).

* ``POST /datasets/{name}/fl/jobs``: create a training job (validated from
  public metadata, priced, checked against the grant; nothing charged yet).
* ``GET /fl/jobs/{job_id}``: the job's plan, rounds done and privacy spent here.
* ``POST /fl/jobs/{job_id}/messages``: one Flower message for the job's
  ClientApp on this node; the reply is a Flower message. Called by the
  analyst's simulation engine (bearer token of the job's creator) or by this
  node's own SuperNode (the node-local key in ``X-Workbench-FL-Key``).
* ``GET /fl/apps``: what this node will train: built-in models, their
  hyperparameters, and the Flower app (FAB) hashes its owner allows.

Privacy guarantee: see :mod:`workbench.channels.fl.jobs`; every round is charged
through the release gate before it is computed.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from workbench.errors import NotAuthenticated
from workbench.node.auth import Principal
from workbench.node.deps import Caller, Service, principal_of, service_of
from workbench.channels.fl.jobs import decode, encode, registry
from workbench.channels.fl.wire import FLJobInfo, FLJobRequest, FLMessage
from workbench.channels.fl.supernode_key import KEY_HEADER, read_key

router = APIRouter(tags=["federated learning"])


def _caller_or_supernode(request: Request) -> Principal | None:
    """The bearer token's user, or ``None`` for this node's own SuperNode (proved by the node-local key)."""
    presented = request.headers.get(KEY_HEADER)
    if presented is not None:
        expected = read_key(service_of(request).config.node.state_dir)
        if expected is None or not hmac.compare_digest(presented.encode(), expected.encode()):
            raise NotAuthenticated("Wrong SuperNode key.", code="not_authenticated")
        return None
    return principal_of(request)


MessageCaller = Annotated[Principal | None, Depends(_caller_or_supernode)]


@router.post("/datasets/{name}/fl/jobs", response_model=FLJobInfo)
def create_job(name: str, body: FLJobRequest, service: Service, caller: Caller) -> FLJobInfo:
    """Create a training job on this node's dataset: built-in model by name, JSON hyperparameters, no code."""
    job = registry(service).create(caller, name, body)
    return job.info(service.name)


@router.get("/fl/jobs/{job_id}", response_model=FLJobInfo)
def job_info(job_id: str, service: Service, caller: Caller) -> FLJobInfo:
    """A job's public plan, the rounds this node answered and the privacy it charged for them."""
    return registry(service).get_for(caller, job_id).info(service.name)


@router.post("/fl/jobs/{job_id}/messages", response_model=FLMessage)
def job_message(job_id: str, body: FLMessage, service: Service, caller: MessageCaller) -> FLMessage:
    """One Flower message for this job's ClientApp, run on this node; returns Flower's reply.

    Privacy guarantee: a 'train' message is answered by one gate-charged round
    of noisy local training (SecAgg+-masked when the job asked for it).
    """
    reg = registry(service)
    job = reg.get_for(caller, job_id)
    return FLMessage(message=encode(reg.handle(job, decode(body.message))))


@router.get("/fl/apps")
def apps(service: Service, caller: Caller) -> dict:
    """The built-in models (by name), their hyperparameters, and the Flower app hashes this node allows."""
    from workbench.channels.fl.apps import describe

    return describe(service.config)
