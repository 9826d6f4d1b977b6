"""A code job's life on the node: submitted → approved (by an owner, by hash) → run → outputs held →
released (or rejected) → collected through the gate.

* The approval is of a hash: ``approval_hash`` covers the code's bytes, its parameters, declared outputs,
  DP allowance, dataset and analyst; ``job_hash`` adds the dataset version. What runs is the stored text.
  A changed cell is a new hash and needs a new approval; the same hash on a new dataset version is approved
  already (its outputs are checked and held again).
* Nobody approves their own code or releases their own outputs (as for access requests).
* Only the node process runs jobs: these functions change records (the CLI calls them too); the node's
  routes wake its runner (:mod:`.worker`).
* Every step is in the audit log: through the gate's ``record`` for the job's own steps, through the review
  queue for output decisions, and through the gate's release path for collection.
"""

from __future__ import annotations

import difflib
import hashlib
import json

from sqlalchemy import select, update

from ...errors import InvalidQuery, NotAuthorized, NotFound, WorkbenchError
from ...node import governance
from ...node.auth import Principal
from ...node.ledger import Cost, choose_grant
from ...node.store import Review, utcnow
from . import sandbox
from .store import CodeJobOutputRecord, CodeJobRecord, ensure_tables, job_info
from .wire import CodeJobInfo, CollectedOutput, JobSubmission

CHANNEL = "jobs"
OWNER_VIEW = ("owner", "auditor")
FINISHED = ("held", "released", "withheld", "failed", "rejected")


def hashes(dataset: str, version: str, user: str, body: JobSubmission) -> tuple[str, str, str]:
    """``(code_hash, approval_hash, job_hash)``: what an owner approves and what one run is."""
    code_hash = hashlib.sha256(body.code.encode()).hexdigest()
    approved = json.dumps({"dataset": dataset, "user": user, "kind": body.kind, "code_hash": code_hash,
                           "parameters": body.parameters, "outputs": body.outputs, "dp_epsilon": body.dp_epsilon},
                          sort_keys=True, separators=(",", ":"))
    approval_hash = hashlib.sha256(approved.encode()).hexdigest()
    return code_hash, approval_hash, hashlib.sha256(f"{approval_hash}:{version}".encode()).hexdigest()


def _check_code(body: JobSubmission) -> None:
    """A notebook must be notebook JSON (parsed as data; nothing is executed on the node)."""
    if body.kind != "ipynb":
        return
    import nbformat

    try:
        nbformat.validate(nbformat.reads(body.code, as_version=4))
    except Exception as exc:  # noqa: BLE001 - nbformat raises several kinds
        raise InvalidQuery(f"The code is not a valid notebook: {str(exc)[:200]}", code="invalid_notebook") from None


def _checked(service, principal: Principal, dataset: str, body: JobSubmission):
    """Refusals knowable before anything runs (audited as refusals)."""
    principal.require("analyst", "owner")
    entry = service.catalog.get(dataset)
    service.gate.check_agreement(principal, entry, CHANNEL)  # the sharing agreement allows code jobs (audited)
    settings = entry.config.code_jobs
    try:
        entry.require_rows()  # a PostgreSQL or Spark table has no file to mount: refused before an owner reads it
        if not settings.enabled:
            raise NotAuthorized(f"The owner of '{entry.name}' does not accept code jobs.", code="jobs_disabled")
        sandbox.tools()
        if len(body.outputs) > settings.max_outputs:
            raise InvalidQuery(f"A job on '{entry.name}' may write at most {settings.max_outputs} outputs.",
                               code="too_many_outputs")
        if body.dp_epsilon > settings.max_dp_epsilon:
            raise InvalidQuery(f"A job on '{entry.name}' may spend at most epsilon={settings.max_dp_epsilon:g} "
                               "through its DP channel.", code="bad_epsilon")
        _check_code(body)
        grant_id = None
        if entry.info.tier == "private":
            with service.store.transaction("read") as session:
                grant_id = choose_grant(session, principal.name, entry.name, body.grant_id).id
    except WorkbenchError as exc:
        service.gate.refuse(principal, entry.name, exc, channel=CHANNEL, kind="code_job")
        raise
    return entry, grant_id


def submit(service, principal: Principal, dataset: str, body: JobSubmission) -> CodeJobInfo:
    """Record a job. Its exact approval hash, approved before (on any version), makes it approved at once."""
    ensure_tables(service.store)
    entry, grant_id = _checked(service, principal, dataset, body)
    code_hash, approval_hash, job_hash = hashes(entry.name, entry.version, principal.name, body)
    with service.store.transaction("read") as session:
        same = session.execute(select(CodeJobRecord).where(
            CodeJobRecord.job_hash == job_hash, CodeJobRecord.user_name == principal.name,
            CodeJobRecord.status.not_in(("rejected", "failed"))).order_by(CodeJobRecord.id.desc())).scalars().first()
        if same is not None:
            return job_info(session, same, owner_view=False)
        earlier = session.execute(select(CodeJobRecord).where(
            CodeJobRecord.approval_hash == approval_hash, CodeJobRecord.approved_by.is_not(None))
            .order_by(CodeJobRecord.id.desc())).scalars().first()
    row = CodeJobRecord(user_name=principal.name, dataset=entry.name, dataset_version=entry.version,
                        code_name=body.code_name, kind=body.kind, code=body.code, code_hash=code_hash,
                        approval_hash=approval_hash, job_hash=job_hash, parameters_json=json.dumps(body.parameters),
                        outputs_json=json.dumps(body.outputs), purpose=body.purpose, note=body.note,
                        grant_id=grant_id, dp_epsilon=body.dp_epsilon, status="pending")
    if earlier is not None:
        row.status, row.approved_by, row.approved_at = "approved", earlier.approved_by, utcnow()
        row.approved_with_job = earlier.id

    def add(session) -> dict:
        session.add(row)
        session.flush()
        return {"job_id": row.id}

    service.gate.record(principal.name, "job_submit", entry.name, add, code_hash=code_hash, job_hash=job_hash,
                        dataset_version=entry.version, approved_with_job=row.approved_with_job)
    return show(service, principal, row.id)


def _job(session, principal: Principal, job_id: int, lock: bool = False) -> CodeJobRecord:
    row = session.get(CodeJobRecord, job_id, with_for_update=lock)
    if row is None or (principal.role not in OWNER_VIEW and row.user_name != principal.name):
        raise NotFound(f"No code job {job_id}.", code="not_found")
    return row


def show(service, principal: Principal, job_id: int) -> CodeJobInfo:
    """One job with its code; owners also get the diff against the last approved version of the same code."""
    ensure_tables(service.store)
    owner_view = principal.role in OWNER_VIEW
    with service.store.transaction("read") as session:
        row = _job(session, principal, job_id)
        info = job_info(session, row, owner_view, with_code=True)
        if owner_view:
            earlier = session.execute(select(CodeJobRecord).where(
                CodeJobRecord.user_name == row.user_name, CodeJobRecord.dataset == row.dataset,
                CodeJobRecord.code_name == row.code_name, CodeJobRecord.approved_by.is_not(None),
                CodeJobRecord.code_hash != row.code_hash, CodeJobRecord.id < row.id)
                .order_by(CodeJobRecord.id.desc())).scalars().first()
            if earlier is not None:
                info.previous_approved_job = earlier.id
                info.diff = code_diff(earlier, row)
    return info


def list_jobs(service, principal: Principal, status: str | None = None) -> list[CodeJobInfo]:
    ensure_tables(service.store)
    owner_view = principal.role in OWNER_VIEW
    with service.store.transaction("read") as session:
        stmt = select(CodeJobRecord).order_by(CodeJobRecord.id.desc())
        if not owner_view:
            stmt = stmt.where(CodeJobRecord.user_name == principal.name)
        if status:
            stmt = stmt.where(CodeJobRecord.status == status)
        return [job_info(session, r, owner_view) for r in session.execute(stmt.limit(500)).scalars()]


def render_code(kind: str, code: str) -> list[str]:
    """The code as an owner reads it: a notebook's cells one after another, each under a marker line."""
    if kind != "ipynb":
        return code.splitlines()
    try:
        cells = json.loads(code).get("cells", [])
    except ValueError:
        return code.splitlines()
    lines = []
    for i, cell in enumerate(cells):
        source = cell.get("source", "")
        tags = cell.get("metadata", {}).get("tags", [])
        lines.append(f"# %% cell {i} [{cell.get('cell_type', '?')}]" + (f" tags={tags}" if tags else ""))
        lines += ("".join(source) if isinstance(source, list) else str(source)).splitlines()
    return lines


def code_diff(before: CodeJobRecord, after: CodeJobRecord) -> str:
    return "\n".join(difflib.unified_diff(render_code(before.kind, before.code), render_code(after.kind, after.code),
                                         f"job {before.id} (approved)", f"job {after.id}", lineterm=""))


def held_files(service, principal: Principal, job_id: int) -> dict[str, bytes]:
    """Owners and auditors: the bytes of every output and log a job's run holds, to read before deciding."""
    principal.require(*OWNER_VIEW)
    import base64

    info = show(service, principal, job_id)
    files = {}
    with service.store.transaction("read") as session:
        for result in info.results:
            if result.review_id is not None:
                held = json.loads(session.get(Review, result.review_id).result_json)
                files[result.name] = base64.b64decode(held["content_b64"])
    return files


# ---------------------------------------------------------------- owners' decisions


def decide(service, principal: Principal, job_id: int, approve: bool, reason: str) -> CodeJobInfo:
    """Approve (then it runs) or reject a pending job. Nobody decides their own code."""
    principal.require("owner")
    ensure_tables(service.store)
    with service.store.transaction("read") as session:
        dataset = _job(session, principal, job_id).dataset

    def change(session) -> dict:
        row = _job(session, principal, job_id, lock=True)
        governance.check_not_own(principal, row.user_name, "approve their own code")
        if row.status != "pending":
            raise InvalidQuery(f"Code job {job_id} is {row.status}, not pending.", code="not_pending")
        row.status, row.reason = ("approved" if approve else "rejected"), reason
        if approve:
            row.approved_by, row.approved_at = principal.name, utcnow()
        return {"job_id": job_id, "user": row.user_name, "code_hash": row.code_hash, "job_hash": row.job_hash}

    service.gate.record(principal.name, "job_approve" if approve else "job_reject", dataset, change, reason=reason)
    return show(service, principal, job_id)


def decide_outputs(service, principal: Principal, job_id: int, names: list[str] | None, release: bool,
                   reason: str) -> CodeJobInfo:
    """Release (or reject) held outputs through the review queue (audited; never by the job's analyst)."""
    principal.require("owner")
    info = show(service, principal, job_id)
    governance.check_not_own(principal, info.user, "release their own job's outputs")
    pending = {o.name: o for o in info.results if o.review_id is not None and o.status == "pending"}
    wanted = list(pending) if names is None else names
    unknown = [n for n in wanted if n not in pending]
    if unknown:
        raise InvalidQuery(f"Not held for a decision in job {job_id}: {', '.join(unknown)}.", code="not_pending")
    for name in wanted:
        governance.decide_review(service.store, principal, pending[name].review_id, release, reason)
    _settle(service, principal, job_id)
    return show(service, principal, job_id)


def _settle(service, principal: Principal, job_id: int) -> None:
    """A held job whose outputs are all decided is released (if any output was) or withheld."""
    with service.store.transaction("read") as session:
        row = _job(session, principal, job_id)
        statuses = [s for (s,) in session.execute(select(Review.status).join(
            CodeJobOutputRecord, CodeJobOutputRecord.review_id == Review.id).where(
            CodeJobOutputRecord.job_id == job_id)).all()]
        if row.status != "held" or "pending" in statuses:
            return
        status = "released" if "approved" in statuses else "withheld"

    def change(session) -> dict:
        session.execute(update(CodeJobRecord).where(CodeJobRecord.id == job_id, CodeJobRecord.status == "held")
                        .values(status=status))
        return {"job_id": job_id, "status": status}

    service.gate.record(principal.name, "job_" + status, row.dataset, change)


# ---------------------------------------------------------------- the analyst's side


def collect(service, principal: Principal, job_id: int, name: str) -> CollectedOutput:
    """A released output, through the release gate: audited, naming the job's grant, at zero DP cost (the
    owner's release, not DP, is what allows it)."""
    ensure_tables(service.store)
    with service.store.transaction("read") as session:
        row = session.get(CodeJobRecord, job_id)
        if row is None or row.user_name != principal.name:
            raise NotFound(f"No code job {job_id}.", code="not_found")
        output = session.execute(select(CodeJobOutputRecord).where(
            CodeJobOutputRecord.job_id == job_id, CodeJobOutputRecord.name == name)).scalars().first()
        if output is None or output.review_id is None:
            raise NotFound(f"Code job {job_id} has no held output {name!r}.", code="not_found")
    _, result = governance.approved_result(service.store, principal, output.review_id)
    entry = service.catalog.get(row.dataset)
    spec = {"job_id": job_id, "output": name, "sha256": result["sha256"], "dataset_version": row.dataset_version}
    outcome = service.gate.release(principal, entry, CHANNEL, "code_job_output", spec, Cost(0.0, 0.0),
                                   compute=lambda: result, grant_id=row.grant_id)
    body = outcome.result
    return CollectedOutput(job_id=job_id, name=name, media_type=body["media_type"], content_b64=body["content_b64"],
                           sha256=body["sha256"], checks=body["checks"], release_id=outcome.release_id,
                           grant_id=outcome.grant_id, replayed=outcome.replayed)


def rerun(service, principal: Principal, job_id: int) -> CodeJobInfo:
    """The same approved code, parameters and outputs on the dataset's current version (no new approval)."""
    with service.store.transaction("read") as session:
        row = session.get(CodeJobRecord, job_id)
        if row is None or row.user_name != principal.name:
            raise NotFound(f"No code job {job_id}.", code="not_found")
        body = JobSubmission(code=row.code, code_name=row.code_name, kind=row.kind,
                             parameters=json.loads(row.parameters_json), outputs=json.loads(row.outputs_json),
                             purpose=row.purpose, note=row.note, grant_id=row.grant_id, dp_epsilon=row.dp_epsilon)
    return submit(service, principal, row.dataset, body)
