"""The node's HTTP face for code jobs.

* ``POST /datasets/{name}/jobs``: submit code (text) with parameters and declared outputs.
* ``GET /jobs``, ``GET /jobs/{id}``: your jobs (owners and auditors: all, with code diffs and output checks).
* ``POST /jobs/{id}/approve`` / ``reject``: owners, not the submitter; approval is of the job's hash.
* ``POST /jobs/{id}/release`` / ``withhold``: owners release or reject held outputs (the review queue).
* ``POST /jobs/{id}/outputs/{output}/collect``: the analyst collects a released output through the gate.
* ``POST /jobs/{id}/rerun``: the approved hash again on the dataset's current version.

Privacy guarantee: no endpoint returns a job's output or log to its analyst
unless an owner released it; collection passes the release gate (audited,
naming the grant, zero DP cost). Errors shown to the analyst name an
exception class at most, never its message.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from ...node.deps import Caller, Service
from . import lifecycle
from .wire import CodeJobInfo, CollectedOutput, Decision, JobSubmission, OutputDecision
from .worker import runner_of

router = APIRouter(tags=["code jobs"])
Status = Annotated[str | None, Query(pattern="^(pending|approved|running|held|released|withheld|rejected|failed)$")]


@router.post("/datasets/{name}/jobs", response_model=CodeJobInfo, status_code=201)
def submit(name: str, body: JobSubmission, service: Service, caller: Caller) -> CodeJobInfo:
    """Submit code to run beside this dataset once an owner approves it (or at once if its hash was approved)."""
    job = lifecycle.submit(service, caller, name, body)
    runner_of(service).wake()  # approved already if its hash was
    return job


@router.get("/jobs", response_model=list[CodeJobInfo])
def jobs(service: Service, caller: Caller, status: Status = None) -> list[CodeJobInfo]:
    runner_of(service).wake()  # picks up jobs approved from the CLI
    return lifecycle.list_jobs(service, caller, status)


@router.get("/jobs/{job_id}", response_model=CodeJobInfo)
def job(job_id: int, service: Service, caller: Caller) -> CodeJobInfo:
    runner_of(service).wake()
    return lifecycle.show(service, caller, job_id)


@router.post("/jobs/{job_id}/approve", response_model=CodeJobInfo)
def approve(job_id: int, body: Decision, service: Service, caller: Caller) -> CodeJobInfo:
    """Owners (not the submitter): approve exactly this code, parameters and outputs; it runs in the sandbox."""
    job = lifecycle.decide(service, caller, job_id, True, body.reason)
    runner_of(service).wake()
    return job


@router.post("/jobs/{job_id}/reject", response_model=CodeJobInfo)
def reject(job_id: int, body: Decision, service: Service, caller: Caller) -> CodeJobInfo:
    return lifecycle.decide(service, caller, job_id, False, body.reason)


@router.post("/jobs/{job_id}/release", response_model=CodeJobInfo)
def release(job_id: int, body: OutputDecision, service: Service, caller: Caller) -> CodeJobInfo:
    """Owners (not the submitter): let held outputs leave (all of them, or those named)."""
    return lifecycle.decide_outputs(service, caller, job_id, body.outputs, True, body.reason)


@router.post("/jobs/{job_id}/withhold", response_model=CodeJobInfo)
def withhold(job_id: int, body: OutputDecision, service: Service, caller: Caller) -> CodeJobInfo:
    return lifecycle.decide_outputs(service, caller, job_id, body.outputs, False, body.reason)


@router.post("/jobs/{job_id}/outputs/{output}/collect", response_model=CollectedOutput)
def collect(job_id: int, output: str, service: Service, caller: Caller) -> CollectedOutput:
    """The analyst collects a released output (through the gate: audited, naming a grant, zero DP cost)."""
    return lifecycle.collect(service, caller, job_id, output)


@router.post("/jobs/{job_id}/rerun", response_model=CodeJobInfo, status_code=201)
def rerun(job_id: int, service: Service, caller: Caller) -> CodeJobInfo:
    """Run the approved code again on the dataset's current version; its outputs are checked and held again."""
    job = lifecycle.rerun(service, caller, job_id)
    runner_of(service).wake()
    return job
