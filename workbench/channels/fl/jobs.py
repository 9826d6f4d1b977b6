"""The node half of federated training: jobs, rounds charged through the gate, Flower's client part.

A job is created by an authenticated analyst (validated against PUBLIC
metadata only, priced, checked against the grant, nothing charged yet). Each
Flower message of the job is then handled *here, on the node*: Flower's own
legacy ``ClientApp`` (a ``NumPyClient``, behind ``secaggplus_mod`` when the
job asked for secure aggregation) runs in the node process with a
node-held ``Context`` (the SecAgg+ secrets never leave the node). Its ``fit``
charges the round through the release gate (channel ``fl``) and only then
computes the noisy local update in a worker process.

Privacy guarantee: every round a node answers is a release charged through
the gate before it is computed, at the exact (Gaussian-DP) increment of the
job's privacy loss; a round beyond the job's plan, or one that the grant or
the dataset's lifetime budget cannot pay, is refused before any data is read.
What leaves the node is the noisy update of :func:`workbench.channels.fl.worker.local_round`
(masked by SecAgg+ when asked) and its noisy metrics — never an un-noised
update or metric.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workbench.errors import BudgetExceeded, InvalidQuery, NotAuthorized, NotFound, WorkbenchError
from workbench.node.auth import Principal
from workbench.node import policy
from workbench.node.data import task_payload
from workbench.node.ledger import Cost
from workbench.channels.fl.accountant import JobPlan, plan_job
from workbench.channels.fl.wire import FLJobInfo, FLJobRequest, TrainSpec
from workbench.channels.fl.trainers import FeatureMap, feature_map, get_trainer, hyperparameters

log = logging.getLogger(__name__)

__all__ = ["Job", "JobRegistry", "registry"]

MAX_JOBS = 256
#: Live jobs one user may hold; creating one more forgets that user's oldest job (never another user's).
MAX_JOBS_PER_USER = 16
JOB_TTL_S = 24 * 3600.0


@dataclass
class Job:
    job_id: str
    principal: Principal
    grant_id: int | None
    dataset: str
    version: str
    spec: TrainSpec
    fmap: FeatureMap
    hp: dict
    plan: JobPlan
    nodes: int
    releases: int = 0
    epsilon_spent: float = 0.0
    delta_spent: float = 0.0
    count: float | None = None
    status: str = "ready"
    created: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    context: Any = None

    def info(self, node: str) -> FLJobInfo:
        return FLJobInfo(job_id=self.job_id, node=node, dataset=self.dataset, dataset_version=self.version,
                         spec=self.spec, features=list(self.fmap.names), plan=self.plan.as_dict(),
                         rounds_done=self.releases, epsilon_spent=self.epsilon_spent, delta_spent=self.delta_spent,
                         grant_id=self.grant_id, status=self.status)


class JobRegistry:
    """The training jobs of one node (in memory: a restarted node forgets its jobs, never its charges)."""

    def __init__(self, service):
        self._service = weakref.ref(service)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    @property
    def service(self):
        return self._service()

    # ---------------------------------------------------------------- jobs

    def create(self, caller: Principal, name: str, request: FLJobRequest) -> Job:
        """Validate a job from public metadata, price it, check the grant can pay for all of it."""
        from flwr.app import Context, RecordDict

        service = self.service
        caller.require("analyst", "owner")
        entry = service.catalog.get(name).require_rows()
        spec = request.spec
        trainer = get_trainer(spec.model)
        hp = hyperparameters(spec.hyperparameters, trainer)
        fmap = feature_map(entry.info, trainer.task, list(spec.x), spec.y)
        trainer.check_size(fmap.dim, hp.model_dump())
        policy.check_loss(service, spec.epsilon, spec.delta, what="one release (here: one training job)")
        if spec.secure_aggregation and request.nodes < 2:
            raise InvalidQuery("Secure aggregation needs at least two nodes (with one, the sum is the update).",
                               code="fl_secagg_needs_nodes")
        plan = plan_job(spec.epsilon, spec.delta, spec.rounds, hp.local_steps)
        grant_id = request.grant_id
        if entry.info.tier != "open":
            grant_id = policy.precheck_budget(service, caller, entry, grant_id, spec.epsilon, spec.delta,
                                              channel="fl", kind="fl_job",
                                              what=f"This training job on '{entry.name}'")
        job = Job(job_id=secrets.token_urlsafe(12), principal=caller, grant_id=grant_id, dataset=entry.name,
                  version=entry.version, spec=spec, fmap=fmap, hp=hp.model_dump(), plan=plan, nodes=request.nodes,
                  context=Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}))
        with self._lock:
            self._make_room(caller.name)
            self._jobs[job.job_id] = job
        return job

    def _make_room(self, user: str) -> None:
        """Forget expired jobs, then ``user``'s oldest beyond their share, then (node full) the oldest job of
        whoever holds the most: creating jobs, which is free, never pushes out another user's training."""
        now = time.time()
        for job_id in [j for j, job in self._jobs.items() if now - job.created > JOB_TTL_S]:
            del self._jobs[job_id]
        mine = [j for j, job in self._jobs.items() if job.principal.name == user]
        for job_id in mine[:max(len(mine) - MAX_JOBS_PER_USER + 1, 0)]:
            del self._jobs[job_id]
        while len(self._jobs) >= MAX_JOBS:
            held = Counter(job.principal.name for job in self._jobs.values())
            heaviest = max(held, key=held.__getitem__)
            del self._jobs[next(j for j, job in self._jobs.items() if job.principal.name == heaviest)]

    def jobs(self) -> list[Job]:
        """The jobs this node holds now (a copy)."""
        with self._lock:
            return list(self._jobs.values())

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"No training job {job_id[:32]!r} on this node (jobs are forgotten when the node "
                           "restarts).", code="fl_unknown_job")
        return job

    def get_for(self, caller: Principal | None, job_id: str) -> Job:
        """The job, if ``caller`` created it (``None`` = the node's own SuperNode, trusted by key)."""
        job = self.get(job_id)
        if caller is not None and caller.name != job.principal.name and caller.role != "owner":
            raise NotAuthorized("This training job belongs to someone else.", code="not_authorized")
        return job

    # ---------------------------------------------------------------- Flower messages

    def handle(self, job: Job, raw: bytes) -> bytes:
        """Run one Flower message through the node's ClientApp for ``job``; return the reply (protobuf)."""
        from flwr.app import MessageType
        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        proto = ProtoMessage()
        try:
            proto.ParseFromString(raw)
            message = message_from_proto(proto)
        except Exception:  # noqa: BLE001 - untrusted bytes
            raise InvalidQuery("The Flower message could not be parsed.", code="fl_message_refused") from None
        if message.metadata.message_type != MessageType.TRAIN or not message.has_content():
            raise InvalidQuery("A node answers only 'train' messages of a job; evaluation on private rows would "
                               "need its own DP release.", code="fl_message_refused")
        with job.lock:
            job.status = "running"
            try:
                reply = _client_app(self.service, job)(message, job.context)
            except WorkbenchError:
                raise
            except Exception as exc:  # noqa: BLE001 - protocol errors from Flower's mods (no data in them)
                log.warning("FL message refused for job %s: %r", job.job_id, exc)
                raise InvalidQuery(f"The node refused the Flower message ({type(exc).__name__}).",
                                   code="fl_message_refused") from None
            finally:
                if job.status == "running":
                    job.status = "done" if job.releases >= job.plan.rounds else "ready"
        return message_to_proto(reply).SerializeToString()


def registry(service) -> JobRegistry:
    """The job registry of a node service (created on first use)."""
    return service.state_of("fl", JobRegistry)


# ---------------------------------------------------------------- one round, through the gate


def _weights_digest(weights: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for w in weights:
        digest.update(np.ascontiguousarray(w, dtype="<f8").tobytes())
    return digest.hexdigest()


def run_round(service, job: Job, weights: list[np.ndarray]) -> dict:
    """Charge and compute this node's next round of ``job`` from the global ``weights``.

    Privacy guarantee: see the module docstring; the charge is the exact
    increment of the job's Gaussian-DP loss, reserved before computing.
    """
    trainer = get_trainer(job.spec.model)
    shapes = trainer.shapes(job.fmap.dim, job.hp)
    if len(weights) != len(shapes) or any(tuple(w.shape) != s for w, s in zip(weights, shapes)):
        raise InvalidQuery(f"The global model has the wrong shape for {job.spec.model} on "
                           f"{job.fmap.dim} features.", code="fl_message_refused")
    weights = [np.asarray(w, dtype=float) for w in weights]
    if not all(np.all(np.isfinite(w)) and np.all(np.abs(w) <= 1e6) for w in weights):
        raise InvalidQuery("The global model has non-finite or huge weights.", code="fl_message_refused")
    entry = service.catalog.get(job.dataset)
    if entry.version != job.version:
        raise InvalidQuery("The dataset changed since this job was created; start a new job.",
                           code="fl_job_stale")
    index = job.releases
    if index >= job.plan.rounds:
        error = BudgetExceeded(f"This job was planned (and its noise calibrated) for {job.plan.rounds} rounds; "
                               "another round would overspend its epsilon.", code="fl_rounds_exhausted")
        service.gate.refuse(job.principal, job.dataset, error, channel="fl", kind="fl_round", job=job.job_id)
        raise error
    epsilon, delta = job.plan.charge(index)
    spec = {"job": job.job_id, "release": index, "weights": _weights_digest(weights),
            "train": job.spec.model_dump(mode="json")}
    unit = entry.info.privacy_unit
    payload = task_payload(entry, model=job.spec.model, features=job.fmap.as_dict(), hyperparameters=job.hp,
                           max_contributions=unit.max_contributions if unit.id_column else 1,
                           weights=[w.tolist() for w in weights], count=job.count,
                           sigma_count=job.plan.sigma_count, sigma_metrics=job.plan.sigma_metrics,
                           sigma_grad=job.plan.sigma_grad, local_steps=job.plan.local_steps)
    outcome = service.gate.release(job.principal, entry, "fl", "fl_round", spec, Cost(epsilon, delta),
                                   compute=lambda: service.pool.run("fl.local_round", payload, user=job.principal.name),
                                   grant_id=job.grant_id)
    if not outcome.replayed:
        job.releases += 1
        job.epsilon_spent += outcome.charged.epsilon
        job.delta_spent += outcome.charged.delta
    result = dict(outcome.result)
    if job.count is None:
        job.count = float(result["count"])
    result["round"] = index + 1
    return result


def _client_app(service, job: Job):
    """Flower's legacy ClientApp for this job (with SecAgg+ when asked), bound to this node."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.clientapp import ClientApp

    class NodeClient(NumPyClient):
        def get_parameters(self, config):
            return get_trainer(job.spec.model).init(job.fmap.dim, job.hp)

        def fit(self, parameters, config):
            result = run_round(service, job, list(parameters))
            metrics = {k: float(v) for k, v in result["metrics"].items()}
            metrics.update({"node": service.name, "round": int(result["round"]),
                            "epsilon_spent": float(job.epsilon_spent), "delta_spent": float(job.delta_spent)})
            weights = [np.asarray(w, dtype=float) for w in result["weights"]]
            return weights, max(1, int(round(result["count"]))), metrics

        def evaluate(self, parameters, config):
            raise InvalidQuery("Evaluation on a node's private rows is not offered.", code="fl_message_refused")

    # SecAgg+ logs every stage of every round at DEBUG on the "flwr" logger: chatter in the node's terminal.
    logging.getLogger("flwr").setLevel(logging.WARNING)
    mods = [_secagg_guard(job), secaggplus_mod] if job.spec.secure_aggregation else [_plain_guard]
    return ClientApp(client_fn=lambda context: NodeClient().to_client(), mods=mods)


def _stage_config(message):
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return message.content.config_records.get(RECORD_KEY_CONFIGS)


def _plain_guard(message, context, call_next):
    return call_next(message, context)


def _secagg_guard(job: Job):
    """Refuse a plain fit in a secure-aggregation job, and SecAgg+ parameters that would expose one node."""
    from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

    def guard(message, context, call_next):
        config = _stage_config(message)
        if config is None or Key.STAGE not in config:
            raise InvalidQuery("This job uses secure aggregation; a plain 'fit' is refused.",
                               code="fl_secagg_required")
        if config[Key.STAGE] == Stage.SETUP:
            sample, shares, threshold = (int(config.get(Key.SAMPLE_NUMBER, 0)), int(config.get(Key.SHARE_NUMBER, 0)),
                                         int(config.get(Key.THRESHOLD, 0)))
            if sample < 2 or sample != job.nodes or shares < 2 or threshold < 2 or 2 * threshold <= shares:
                raise InvalidQuery(
                    f"Unsafe SecAgg+ parameters (nodes={sample}, shares={shares}, threshold={threshold}); "
                    f"this job expects {job.nodes} nodes and a threshold above half the shares.",
                    code="fl_secagg_unsafe")
        return call_next(message, context)

    return guard


def encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except Exception:  # noqa: BLE001
        raise InvalidQuery("The Flower message is not valid base64.", code="fl_message_refused") from None
