"""The node half of the synthetic-data channel.

* ``POST /datasets/{name}/synth/preview``: the price and the planned noise, spending nothing.
* ``POST /datasets/{name}/synth/jobs``: start a DP synthesis (202); the gate charges it before the fit.
* ``GET /synth/jobs/{id}`` / ``DELETE /synth/jobs/{id}``: progress and result / cancel (charge stands).
* ``POST /datasets/{name}/synth/sdv``: SDV on the real rows, if the owner allows it; held for review.
* ``GET /datasets/{name}/mock`` and ``GET /synth/mocks``: the public DP mocks, free.

Privacy guarantee: a DP synthesis is one OpenDP measurement under pure
epsilon-DP at the dataset's privacy unit (see :mod:`workbench.channels.synth.worker`),
charged through the release gate (channel ``synth``) before it is computed;
the same spec at the same epsilon on the same dataset version is replayed
for free. Keys and bins come from the catalogue only. Previews read public
metadata and the caller's own budget only.
"""

from __future__ import annotations

import math

from fastapi import APIRouter

from workbench.errors import InvalidQuery, NotAuthorized, WorkbenchError
from workbench.node import governance
from workbench.node import policy
from workbench.node.catalog import DatasetEntry
from workbench.node.data import task_payload
from workbench.node.gate import Outcome, spec_hash
from workbench.node.ledger import Cost, choose_grant, left
from workbench.node.deps import Caller, Service
from workbench.node.service import NodeService
from workbench.protocol import Budget, Table, require_supported_protocol
from workbench.channels.synth import domain
from workbench.channels.synth import mocks
from workbench.channels.synth import shapes
from workbench.channels.synth.worker import AIM_ONEWAY_SPLIT, MST_MEASURE_SPLIT, MST_ONEWAY_SPLIT, budget_shares
from workbench.channels.synth.jobs import Job, jobs_of
from workbench.channels.synth.prepare import canonical, checked, run_isolated, task
from workbench.channels.synth.wire import (MockInfo, MockRelease, PlannedMeasurement, SDVRequest, SynthJob, SynthPreview, SynthRelease,
                   SynthRequest, SynthSpec)

router = APIRouter(tags=["synthetic data"])
CHANNEL = "synth"


# ---------------------------------------------------------------- checks (public metadata only)


def planned(spec: SynthSpec, plan: domain.Plan, epsilon: float, contributions: int) -> tuple[list, str]:
    """The marginals a method measures and their Laplace noise, from the budget split the fit uses (the model's
    share, split as OpenDP's dp.mbi does, and the fine one-way marginals' share).

    Approximate (the fit reports the exact figures); computed from public metadata only.
    """
    fines = {n: f for n in plan.columns if (f := shapes.fine_bins(plan.domains[n])) is not None}
    shares = budget_shares(spec.method, epsilon, len(fines))
    out, note = _planned_model(spec, plan, shares["model_epsilon"], contributions)
    out += [PlannedMeasurement(columns=[n], cells=f.cells, epsilon=shares["shapes_epsilon_per_column"],
                               noise_std=_laplace_std(contributions, shares["shapes_epsilon_per_column"]))
            for n, f in fines.items()]
    if fines:
        note = (f"{shares['shapes']:.0%} of epsilon measures fine one-way marginals of {', '.join(fines)} (the "
                f"shape of values inside each public bin); the method gets the rest. " + note)
    return out, note + " Pure epsilon-DP (Laplace noise, delta = 0), one composition."


def _laplace_std(contributions: int, eps: float) -> float:
    return contributions / eps * math.sqrt(2)   # Laplace std at sensitivity ``contributions``


def _planned_model(spec: SynthSpec, plan: domain.Plan, epsilon: float, contributions: int) -> tuple[list, str]:
    d = len(plan.columns)
    out = []
    oneway = MST_ONEWAY_SPLIT if spec.method == "mst" else AIM_ONEWAY_SPLIT
    if spec.method in ("mst", "aim"):
        one_eps = epsilon * oneway / d
        out += [PlannedMeasurement(columns=[c], cells=plan.cells((c,)), epsilon=one_eps,
                                   noise_std=_laplace_std(contributions, one_eps)) for c in plan.columns]
    if spec.method == "mst":
        rest = 1 - oneway
        pair_eps = epsilon * rest * MST_MEASURE_SPLIT / max(d - 1, 1)
        out.append(PlannedMeasurement(columns=["(chosen by MST)"], cells=0, epsilon=pair_eps,
                                      noise_std=_laplace_std(contributions, pair_eps), adaptive=True))
        note = (f"MST spends {oneway:.0%} of its share on {d} one-way marginals, "
                f"{rest * (1 - MST_MEASURE_SPLIT):.1%} on choosing {d - 1} column pairs (a spanning tree) and "
                f"{rest * MST_MEASURE_SPLIT:.1%} on measuring them.")
    elif spec.method == "aim":
        out += [PlannedMeasurement(columns=list(c), cells=plan.cells(c), adaptive=True) for c in plan.cliques]
        note = (f"AIM spends {oneway:.0%} of its share on one-way marginals, then picks marginals from the workload "
                "below round by round; how much each gets depends on what it picks.")
    else:
        each = epsilon / len(plan.cliques)
        out += [PlannedMeasurement(columns=list(c), cells=plan.cells(c), epsilon=each,
                                   noise_std=_laplace_std(contributions, each)) for c in plan.cliques]
        note = ("One DP histogram per column, sampled independently: no correlation is kept."
                if spec.method == "independent" else
                f"Fixed measures exactly these {len(plan.cliques)} marginals (default: a chain of neighbouring "
                "columns), its share split evenly.")
    return out, note


def _budget_left(service: NodeService, caller, entry: DatasetEntry, grant_id: int | None) -> tuple[int | None,
                                                                                                   Budget | None]:
    if entry.info.tier != "private":
        return None, None
    with service.store.transaction() as session:
        grant = choose_grant(session, caller.name, entry.name, grant_id)
        return grant.id, left(grant)


# ---------------------------------------------------------------- DP synthesis


@router.post("/datasets/{name}/synth/preview", response_model=SynthPreview)
def preview(name: str, body: SynthRequest, service: Service, caller: Caller) -> SynthPreview:
    """The price of a synthesis and the noise it will add, before anything is spent."""
    caller.require("analyst", "owner")
    require_supported_protocol(body.protocol)
    entry, plan = checked(service, name, body.spec, body.epsilon)
    grant_id, before = _budget_left(service, caller, entry, body.grant_id)
    spec = canonical(body.spec, plan)
    replay = service.gate.has_answer(caller, entry, spec_hash(CHANNEL, spec, Cost(body.epsilon, 0.0)))
    after = None
    if before is not None:
        after = Budget(epsilon=max(before.epsilon - (0.0 if replay else body.epsilon), 0.0), delta=before.delta)
    measurements, note = planned(body.spec, plan, body.epsilon, entry.info.privacy_unit.max_contributions)
    return SynthPreview(dataset=entry.name, dataset_version=entry.version, spec=body.spec, columns=plan.columns,
                        dropped=plan.dropped, epsilon=body.epsilon, delta=0.0, grant_id=grant_id,
                        measurements=measurements, note=note, max_rows=entry.config.synth_max_rows,
                        time_limit_s=entry.config.synth_timeout_s, budget_left_before=before,
                        budget_left_after=after, would_replay=replay)


def release_model(service: NodeService, entry: DatasetEntry, outcome: Outcome, kind: str, dp: bool,
                  spec: dict) -> SynthRelease:
    result = outcome.result
    return SynthRelease(release_id=outcome.release_id, dataset=entry.name, dataset_version=outcome.dataset_version or entry.version, kind=kind,
                        dp=dp, spec=spec, epsilon=outcome.cost.epsilon, delta=outcome.cost.delta,
                        epsilon_charged=outcome.charged.epsilon, delta_charged=outcome.charged.delta,
                        grant_id=outcome.grant_id, replayed=outcome.replayed, released_at=outcome.released_at,
                        table=Table(**result["table"]), report=result["report"], budget_left=outcome.budget_left)


@router.post("/datasets/{name}/synth/jobs", response_model=SynthJob, status_code=202)
def start(name: str, body: SynthRequest, service: Service, caller: Caller) -> SynthJob:
    """Start a DP synthesis. Over budget is refused now, before anything runs; the gate reserves the charge
    when the fit starts; the same question again is answered from the store for free."""
    caller.require("analyst", "owner")
    require_supported_protocol(body.protocol)
    entry, plan = checked(service, name, body.spec, body.epsilon)
    spec = canonical(body.spec, plan)
    cost = Cost(body.epsilon, 0.0)
    replay = service.gate.has_answer(caller, entry, spec_hash(CHANNEL, spec, cost))
    if not replay and entry.info.tier == "private":
        policy.precheck_budget(service, caller, entry, body.grant_id, body.epsilon, 0.0, channel=CHANNEL,
                               kind=body.spec.method, what="This synthesis")
    timeout = entry.config.synth_timeout_s
    jobs = jobs_of(service)

    def work(job: Job) -> None:
        payload = task(service, entry, spec, body.epsilon, job)
        outcome = service.gate.release(caller, entry, CHANNEL, body.spec.method, spec, cost,
                                       compute=lambda: run_isolated("synth.fit", payload, timeout),
                                       grant_id=body.grant_id, request_id=body.request_id,
                                       queued_elsewhere=True)  # the job queue bounds fits (synth_workers)
        job.release = release_model(service, entry, outcome, body.spec.method, True, spec)

    job = jobs.submit(caller.name, entry.name, body.spec.method, body.request_id, work, queue=not replay)
    return job.view()


@router.get("/synth/jobs/{job_id}", response_model=SynthJob)
def job_status(job_id: str, service: Service, caller: Caller) -> SynthJob:
    """A synthesis job's state, progress and (when done) its release. Only its owner sees it."""
    return jobs_of(service).get(job_id, caller.name).view()


@router.delete("/synth/jobs/{job_id}", response_model=SynthJob)
def cancel(job_id: str, service: Service, caller: Caller) -> SynthJob:
    """Cancel a job: a queued one never runs (free); a running one's worker is killed and its charge stands."""
    return jobs_of(service).cancel(job_id, caller.name).view()


# ---------------------------------------------------------------- SDV on real rows (non-DP, owner-approved)


def sdv_allowed(entry: DatasetEntry) -> None:
    """Step 1 of the approval: the owner allows SDV on this dataset in its config. Step 2 is the review queue:
    every fitted result is held until an owner approves it (see :mod:`workbench.node.governance`)."""
    if not entry.config.allow_sdv_on_real:
        raise NotAuthorized(f"SDV on the real rows of '{entry.name}' is not a DP release and its owner has not "
                            "allowed it (allow_sdv_on_real). Use ds.synthesize(...) and syn.fit_sdv(...) instead: "
                            "SDV on DP synthetic rows stays DP.", code="sdv_not_approved")


@router.post("/datasets/{name}/synth/sdv", response_model=SynthJob, status_code=202)
def sdv_on_real(name: str, body: SDVRequest, service: Service, caller: Caller) -> SynthJob:
    """Fit an SDV synthesizer on the real rows (allowed datasets only). The result is held in the owners' review
    queue with SDMetrics privacy metrics; collect it with ``POST /reviews/{id}/collect`` once approved."""
    caller.require("analyst", "owner")
    require_supported_protocol(body.protocol)
    entry = service.catalog.get(name).require_rows()
    try:
        sdv_allowed(entry)
        if body.spec.rows > entry.config.synth_max_rows:
            raise InvalidQuery(f"The owner allows at most {entry.config.synth_max_rows} synthetic rows.",
                               code="too_many_rows")
        grant_id = _budget_left(service, caller, entry, body.grant_id)[0] if entry.info.tier == "private" \
            else body.grant_id   # a live grant is needed to collect it later: the one asked under is recorded
    except WorkbenchError as exc:
        service.gate.refuse(caller, entry.name, exc, channel=CHANNEL, kind="sdv_real")
        raise
    spec_model = SynthSpec(method="independent", rows=1, columns=body.spec.columns)  # the column checks
    plan = domain.plan(entry.info, spec_model)
    spec = body.spec.model_copy(update={"columns": plan.columns}).model_dump(mode="json")
    timeout = entry.config.synth_timeout_s

    def work(job: Job) -> None:
        payload = task_payload(entry, spec=spec, columns=plan.columns, progress_path=str(job.progress_path),
                               sdv_home=str(service.config.node.state_dir / "synth" / "sdv-home"))
        result = run_isolated("synth.sdv_fit", payload, timeout)
        summary = {"what_leaves": f"{body.spec.rows} rows x {len(plan.columns)} columns from SDV "
                                  f"{body.spec.synthesizer} fitted on the real rows (not DP)",
                   "columns": plan.columns, "privacy_metrics": result["report"]["privacy_metrics"]}
        asked = {**spec, "grant_id": grant_id} if grant_id is not None else spec   # collected under that grant
        review = governance.submit_review(service.store, caller, entry, CHANNEL, "sdv_real", asked, summary, result)
        job.review = review.model_dump(mode="json")

    job = jobs_of(service).submit(caller.name, entry.name, "sdv_real", body.request_id, work)
    return job.view()


# ---------------------------------------------------------------- DP mocks (public, free)


@router.get("/datasets/{name}/mock", response_model=MockRelease)
def mock(name: str, service: Service, caller: Caller) -> MockRelease:
    """The dataset's public DP mock: the same rows for everyone, free (its owner paid once)."""
    return mocks.get(service, service.catalog.get(name))


@router.get("/synth/mocks", response_model=list[MockInfo])
def mock_list(service: Service, caller: Caller) -> list[MockInfo]:
    """Every published DP mock on this node."""
    return mocks.all_infos(service)
