"""What every synthesis does before its fit, on the node: checks from public metadata, the canonical
question, the worker's task and the fresh worker process it runs in (DP synthesis and the owner's mocks)."""

from __future__ import annotations

from typing import Any

from workbench.errors import InvalidQuery
from workbench.node import policy
from workbench.node.catalog import DatasetEntry
from workbench.node.data import task_payload
from workbench.node.service import NodeService
from workbench.node.worker import WorkerPool
from workbench.channels.synth import domain
from workbench.channels.synth.jobs import Job, jobs_of
from workbench.channels.synth.wire import SynthSpec

__all__ = ["canonical", "checked", "run_isolated", "task"]


def checked(service: NodeService, name: str, spec: SynthSpec, epsilon: float | None) -> tuple[DatasetEntry,
                                                                                               domain.Plan]:
    entry = service.catalog.get(name).require_rows()
    policy.check_loss(service, epsilon)
    if spec.rows > entry.config.synth_max_rows:
        raise InvalidQuery(f"The owner allows at most {entry.config.synth_max_rows} synthetic rows per synthesis "
                           f"of '{entry.name}'.", code="too_many_rows")
    return entry, domain.plan(entry.info, spec)


def canonical(spec: SynthSpec, plan: domain.Plan) -> dict[str, Any]:
    """The spec with its columns resolved, so ``columns=None`` and the explicit list are one question."""
    return spec.model_copy(update={"columns": plan.columns}).model_dump(mode="json")


def task(service: NodeService, entry: DatasetEntry, spec: dict, epsilon: float, job: Job | None) -> dict:
    return task_payload(entry, spec=spec, epsilon=epsilon, progress_path=str(job.progress_path) if job else None,
                        jax_cache=jobs_of(service).jax_cache)


def run_isolated(target: str, payload: dict, timeout_s: float) -> dict:
    """Run one fit in a fresh worker process of its own (killed on time-out, crash or cancel)."""
    pool = WorkerPool(1, timeout_s, streaming=False)
    try:
        return pool.run(target, payload, timeout_s=timeout_s)
    finally:
        pool.close()
