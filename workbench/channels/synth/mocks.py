"""DP mocks: one public synthetic sample per dataset, published by an owner, free for everyone.

The owner pays once from the dataset's lifetime budget. The payment goes
through the release gate like any release: the publishing owner gets a grant
of exactly the mock's epsilon (audited as ``grant_add``), the gate reserves it
against that grant and the dataset's cap, and the grant is revoked after use
(its spending stays on the dataset). The mock is stored in the node's state
folder and served to every authenticated user unchanged.

Privacy guarantee: the mock is one DP synthesis (see :mod:`workbench.channels.synth.worker`)
at the published epsilon; serving the stored rows again is post-processing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from sqlalchemy import select

from workbench.errors import InvalidQuery, NotAuthorized, NotFound
from workbench.node import admin
from workbench.node.auth import Principal
from workbench.node.catalog import DatasetEntry
from workbench.node.ledger import Cost
from workbench.node.store import User
from workbench.protocol import DatasetInfo
from workbench.channels.synth.prepare import canonical, checked, run_isolated, task
from workbench.channels.synth.wire import MockInfo, MockRelease, SynthSpec

PURPOSE = "publish the dataset's public DP mock"


def _folder(service) -> Path:
    path = service.config.node.state_dir / "synth" / "mocks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _path(service, dataset: str) -> Path:
    return _folder(service) / f"{dataset}.json"


def load(service, entry: DatasetEntry) -> MockRelease | None:
    try:
        raw = json.loads(_path(service, entry.name).read_text())
    except (OSError, ValueError):
        return None
    raw["info"]["current"] = raw["info"]["dataset_version"] == entry.version
    return MockRelease.model_validate(raw)


def info(service, entry: DatasetEntry) -> MockInfo | None:
    found = load(service, entry)
    return None if found is None else found.info


def get(service, entry: DatasetEntry) -> MockRelease:
    found = load(service, entry)
    if found is None:
        raise NotFound(f"No DP mock has been published for '{entry.name}' yet; its owner can publish one with "
                       "'workbench node mock publish'.", code="no_mock")
    return found


def _owner(service, name: str | None) -> str:
    with service.store.transaction() as session:
        owners = [u.name for u in session.execute(select(User).where(User.role == "owner")).scalars()
                  if not u.disabled]
    if name is None:
        if len(owners) != 1:
            raise InvalidQuery("Name the publishing owner with --as (owners: " + ", ".join(owners or ["none"]) + ").",
                               code="invalid_query")
        return owners[0]
    if name not in owners:
        raise NotAuthorized(f"{name!r} is not an owner of this node.", code="not_authorized")
    return name


def publish(service, dataset: str, spec: SynthSpec, epsilon: float, owner: str | None,
            run: Callable[[], dict]) -> MockInfo:
    """Charge ``epsilon`` to the dataset (via an owner grant and the gate), fit, store the mock.

    ``run()`` computes the synthesis (the caller supplies the worker and the progress display).
    """
    entry = service.catalog.get(dataset)
    if entry.info.tier != "private":
        raise InvalidQuery(f"'{dataset}' is open data: publish the rows themselves, not a mock.",
                           code="invalid_query")
    if spec.rows > entry.config.synth_max_rows:
        raise InvalidQuery(f"This dataset allows at most {entry.config.synth_max_rows} synthetic rows.",
                           code="too_many_rows")
    publisher = _owner(service, owner)
    grant = admin.add_grant(service.store, publisher, dataset, PURPOSE, epsilon, 0.0, actor=publisher,
                            known_datasets=set(service.config.datasets))
    try:
        outcome = service.gate.release(Principal(publisher, "owner"), entry, "synth", "mock",
                                       {"mock": spec.model_dump(mode="json")}, Cost(epsilon, 0.0),
                                       compute=run, grant_id=grant.grant_id)
    finally:
        admin.revoke_grant(service.store, grant.grant_id, actor=publisher)
    mock_info = MockInfo(dataset=dataset, dataset_version=entry.version, current=True, method=spec.method,
                         epsilon=epsilon, rows=spec.rows, published_at=outcome.released_at,  # the gate's UTC time
                         published_by=publisher)
    body = MockRelease(info=mock_info, table=outcome.result["table"], report=outcome.result["report"])
    target = _path(service, dataset)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(body.model_dump_json())
    tmp.replace(target)
    return mock_info


def all_infos(service) -> list[MockInfo]:
    out = []
    for entry in service.catalog.entries():
        found = info(service, entry)
        if found is not None:
            out.append(found)
    return out


def publish_with_progress(service, dataset: str, spec: SynthSpec, epsilon: float, owner: str | None,
                          progress: bool = True) -> MockInfo:
    """:func:`publish`, fitting in a worker process of its own, with a tqdm bar (the owner's CLI)."""
    import tempfile
    import threading

    entry, plan = checked(service, dataset, spec, None)
    spec_dict = canonical(spec, plan)
    with tempfile.TemporaryDirectory() as tmp:
        progress_path = Path(tmp) / "progress.json"
        payload = task(service, entry, spec_dict, epsilon, None) | {"progress_path": str(progress_path)}
        stop = threading.Event()

        def show() -> None:
            from tqdm.auto import tqdm

            with tqdm(total=100, desc="starting", unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}") \
                    as bar:
                while not stop.wait(0.5):
                    try:
                        state = json.loads(progress_path.read_text())
                    except (OSError, ValueError):
                        continue
                    bar.set_description_str(state.get("phase", ""))
                    bar.n = int(100 * state.get("progress", 0.0))
                    bar.refresh()

        watcher = threading.Thread(target=show, daemon=True) if progress else None
        if watcher is not None:
            watcher.start()
        try:
            return publish(service, dataset, SynthSpec.model_validate(spec_dict), epsilon, owner,
                           run=lambda: run_isolated("synth.fit", payload, entry.config.synth_timeout_s))
        finally:
            stop.set()
            if watcher is not None:
                watcher.join(timeout=2)


def annotate(service, entry: DatasetEntry, info: DatasetInfo) -> DatasetInfo:
    """``info`` with ``has_mock`` set (a file check: cheap enough for every catalogue call)."""
    if entry.info.tier == "private" and _path(service, entry.name).exists():
        return info.model_copy(update={"has_mock": True})
    return info


def install(_app, _service) -> None:
    """Show ``has_mock`` in the catalogue (see :data:`workbench.node.deps.INFO_ANNOTATORS`)."""
    from workbench.node.deps import INFO_ANNOTATORS

    if annotate not in INFO_ANNOTATORS:
        INFO_ANNOTATORS.append(annotate)
