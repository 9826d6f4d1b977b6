"""The client half of the synthetic-data channel: ``ds.synthesize(...)``, ``ds.mock()``, SDV.

Nothing executable is sent: a synthesis is a :class:`~workbench.channels.synth.wire.SynthSpec`
the node checks against public metadata. Long fits run on the node while the
client polls and shows a tqdm bar; Ctrl-C (or ``job.cancel()``) stops the fit
(the charge stands once it has started).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pandas as pd

from workbench.client.dataset import RemoteDataset
from workbench.client.handles import register
from workbench.errors import ComputationFailed, WorkbenchError, error_class_for
from workbench.protocol import DatasetInfo, Table
from workbench.channels.synth.report import FidelityReport
from workbench.channels.synth.wire import MockRelease, SDVRequest, SDVSpec, SynthJob, SynthPreview, SynthRelease, SynthRequest, SynthSpec



def frame_from_table(table: Table, info: DatasetInfo) -> pd.DataFrame:
    """A DataFrame with dtypes from the public schema (categories in their public order)."""
    frame = pd.DataFrame(table.data, columns=table.columns)
    for name in table.columns:
        col = info.column(name)
        if col is None:
            continue
        if col.type == "int":
            frame[name] = pd.array(frame[name], dtype="Int64")
        elif col.type == "float":
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype("float64")
        elif col.type == "bool":
            frame[name] = pd.array(frame[name], dtype="boolean")
        elif col.categories:
            frame[name] = pd.Categorical(frame[name], categories=[str(c) for c in col.categories])
    return frame


class SynthesisPreview:
    """The price of a synthesis and the noise it will add, before anything is spent."""

    def __init__(self, body: SynthPreview):
        self.body = body

    @property
    def epsilon(self) -> float:
        return self.body.epsilon

    @property
    def would_replay(self) -> bool:
        return self.body.would_replay

    @property
    def budget_left_after(self) -> dict | None:
        return None if self.body.budget_left_after is None else self.body.budget_left_after.model_dump()

    def measurements(self) -> pd.DataFrame:
        """The marginals the method measures, the epsilon each gets and its noise (std of a cell count)."""
        return pd.DataFrame([m.model_dump() for m in self.body.measurements])

    def to_dict(self) -> dict:
        return self.body.model_dump(mode="json")

    def __repr__(self) -> str:
        b = self.body
        price = "free (already answered)" if b.would_replay else f"epsilon={b.epsilon:g} (delta 0)"
        after = "" if b.budget_left_after is None else f"; your grant keeps epsilon={b.budget_left_after.epsilon:g}"
        return (f"<SynthesisPreview {b.dataset} {b.spec.method}, {b.spec.rows} rows of {len(b.columns)} columns: "
                f"cost {price}{after}. {b.note}>")

    def _repr_html_(self) -> str:
        import html

        return f"<p>{html.escape(repr(self))}</p>" + self.measurements().to_html(index=False)


class SyntheticData:
    """Synthetic rows and their report. ``data`` is a pandas DataFrame; ``report`` a :class:`FidelityReport`."""

    def __init__(self, data: pd.DataFrame, report: FidelityReport, info: DatasetInfo, *, dp: bool,
                 epsilon: float | None, release_id: int | None = None, replayed: bool = False,
                 kind: str = "", released: Any = None):
        self.data, self.report, self.schema = data, report, info
        self.dp, self.epsilon, self.release_id, self.replayed, self.kind = dp, epsilon, release_id, replayed, kind
        self.released = released

    @property
    def method(self) -> str:
        return self.report.method or self.kind

    def fit_sdv(self, synthesizer: str = "GaussianCopula", **kwargs):
        """Fit an SDV synthesizer (GaussianCopula, CTGAN, TVAE, CopulaGAN) on these rows, on your machine.

        Privacy guarantee: for DP rows the SDV model is post-processing of the DP release, so it (and
        anything you sample from it) keeps the same epsilon. SDV metadata comes from the public schema.
        """
        from workbench.channels.synth.sdv_support import fit_on_frame

        return fit_on_frame(self.data, self.schema, synthesizer, dp=self.dp, epsilon=self.epsilon, **kwargs)

    def __repr__(self) -> str:
        return f"<SyntheticData {self.schema.name}: {len(self.data)} rows; {self.report.summary()}>"

    def _repr_html_(self) -> str:
        return self.data.head(10).to_html() + self.report._repr_html_()


def _from_release(body: SynthRelease, info: DatasetInfo) -> SyntheticData:
    report = FidelityReport(body.report, epsilon_charged=body.epsilon_charged, replayed=body.replayed)
    frame = frame_from_table(body.table, info)
    frame.attrs.update({"dataset": body.dataset, "dataset_version": body.dataset_version, "release_id":
                        body.release_id, "epsilon": body.epsilon, "epsilon_charged": body.epsilon_charged,
                        "replayed": body.replayed, "method": body.kind, "dp": body.dp})
    return SyntheticData(frame, report, info, dp=body.dp, epsilon=body.epsilon, release_id=body.release_id,
                         replayed=body.replayed, kind=body.kind, released=body)


class HeldRelease:
    """An SDV-on-real-rows result waiting in the owners' review queue (not DP)."""

    def __init__(self, dataset: "RemoteDataset", review: dict):
        self.dataset, self.review = dataset, review

    @property
    def review_id(self) -> int:
        return int(self.review["review_id"])

    def status(self) -> str:
        raw = self.dataset.node.request("GET", f"/reviews/{self.review_id}")
        self.review = raw
        return raw["status"]

    def collect(self) -> SyntheticData:
        """The rows, once an owner approved them (``not_approved`` before). Audited; spends no DP budget."""
        grant = self.dataset.grant_id
        raw = self.dataset.node.request("POST", f"/reviews/{self.review_id}/collect",
                                        params={"grant_id": grant} if grant is not None else None)
        result = raw["result"]
        report = FidelityReport(result["report"])
        frame = frame_from_table(Table(**result["table"]), self.dataset.schema)
        frame.attrs.update({"dp": False, "review_id": self.review_id, "release_id": raw["release_id"]})
        return SyntheticData(frame, report, self.dataset.schema, dp=False, epsilon=None,
                             release_id=raw["release_id"], replayed=raw["replayed"], kind="sdv_real")

    def __repr__(self) -> str:
        return (f"<HeldRelease review {self.review_id} on {self.dataset.name}: {self.review.get('status')}; "
                "an owner must approve it before .collect()>")


class SynthesisJob:
    """A synthesis running on the node."""

    def __init__(self, dataset: "RemoteDataset", view: SynthJob):
        self.dataset, self.view = dataset, view

    @property
    def job_id(self) -> str:
        return self.view.job_id

    def refresh(self) -> SynthJob:
        self.view = SynthJob.model_validate(self.dataset.node.request("GET", f"/synth/jobs/{self.job_id}"))
        return self.view

    def cancel(self) -> SynthJob:
        """Stop the fit. Queued: nothing is charged. Running: the worker is killed; the charge stands."""
        self.view = SynthJob.model_validate(self.dataset.node.request("DELETE", f"/synth/jobs/{self.job_id}"))
        return self.view

    def wait(self, progress: bool = True, poll_s: float = 0.5, timeout_s: float | None = None):
        """Poll until the job ends (a tqdm bar shows the phase); Ctrl-C cancels it."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=100, desc="queued", unit="%", leave=False,
                       bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            view = self.view
            while view.status in ("queued", "running"):
                if bar is not None:
                    bar.set_description_str(view.phase or view.status)
                    bar.n = int(round(view.progress * 100))
                    bar.refresh()
                if deadline is not None and time.monotonic() > deadline:
                    raise ComputationFailed(f"Still running after {timeout_s:g} s (job {self.job_id} continues; "
                                            "call .wait() again or .cancel()).", code="computation_timeout")
                time.sleep(poll_s)
                view = self.refresh()
        except KeyboardInterrupt:
            self.cancel()
            raise
        finally:
            if bar is not None:
                bar.close()
        return self.result()

    def result(self):
        view = self.view
        if view.status == "done":
            if view.release is not None:
                return _from_release(view.release, self.dataset.schema)
            return HeldRelease(self.dataset, view.review or {})
        if view.error is not None:
            raise error_class_for(view.error.code)(view.error.message, code=view.error.code,
                                                   details=view.error.details)
        raise WorkbenchError(f"Synthesis job {self.job_id} is {view.status}.", code="computation_failed")

    def __repr__(self) -> str:
        return f"<SynthesisJob {self.job_id[:8]} {self.view.status} {self.view.phase} {self.view.progress:.0%}>"


class Synthesis:
    """A DP synthesis request: ``preview()`` its price, then ``run()`` it."""

    def __init__(self, dataset: "RemoteDataset", spec: SynthSpec, epsilon: float):
        self.dataset, self.spec, self.epsilon = dataset, spec, float(epsilon)

    def _body(self, request_id: str | None = None) -> dict:
        body = SynthRequest(spec=self.spec, epsilon=self.epsilon, grant_id=self.dataset.grant_id,
                            request_id=request_id)
        return body.model_dump(mode="json", exclude_none=True)

    def preview(self) -> SynthesisPreview:
        """The price and planned noise. Spends nothing."""
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/synth/preview"), json=self._body())
        return SynthesisPreview(SynthPreview.model_validate(raw))

    def start(self) -> SynthesisJob:
        """Start the fit on the node (charged through the release gate when it starts)."""
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/synth/jobs"),
                                        json=self._body(uuid.uuid4().hex), retries=3)
        return SynthesisJob(self.dataset, SynthJob.model_validate(raw))

    def run(self, progress: bool = True, timeout_s: float | None = None) -> SyntheticData:
        """Start, wait with a progress bar, and return the synthetic rows and their report.

        Privacy guarantee: pure epsilon-DP for the dataset's privacy unit (OpenDP ``dp.mbi``); the rows, the
        report and anything computed from them are post-processing. The same request again is free.
        """
        return self.start().wait(progress=progress, timeout_s=timeout_s)

    def __repr__(self) -> str:
        return f"<Synthesis {self.dataset.name} {self.spec.method} rows={self.spec.rows} epsilon={self.epsilon:g}>"


def synthesis(dataset: "RemoteDataset", rows: int, epsilon: float, method: str = "mst", *,
              columns: list[str] | None = None, bins: int = 16, marginals: list[list[str]] | None = None,
              rounds: int | None = None) -> Synthesis:
    spec = SynthSpec(method=method, rows=rows, columns=columns, bins=bins,
                     marginals=[list(m) for m in marginals] if marginals is not None else None, rounds=rounds)
    return Synthesis(dataset, spec, epsilon)


def synthesize(dataset: "RemoteDataset", rows: int, epsilon: float, method: str = "mst", *, preview: bool = False,
               progress: bool = True, **options) -> "SyntheticData | SynthesisPreview":
    """``preview=True``: the price only (free). Otherwise run the synthesis and return the rows and report."""
    job = synthesis(dataset, rows, epsilon, method, **options)
    return job.preview() if preview else job.run(progress=progress)


def sdv_on_real(dataset: "RemoteDataset", synthesizer: str = "GaussianCopula", rows: int = 1000, *,
                columns: list[str] | None = None, epochs: int = 50, progress: bool = True) -> HeldRelease:
    """Ask the node to fit SDV on the REAL rows (not DP). Refused (``sdv_not_approved``) unless the owner allowed
    it for this dataset; the result is held until an owner approves it after seeing its privacy metrics."""
    body = SDVRequest(spec=SDVSpec(synthesizer=synthesizer, rows=rows, columns=columns, epochs=epochs),
                      grant_id=dataset.grant_id, request_id=uuid.uuid4().hex)
    raw = dataset.node.request("POST", dataset.endpoint("/synth/sdv"), json=body.model_dump(mode="json",
                                                                                          exclude_none=True))
    return SynthesisJob(dataset, SynthJob.model_validate(raw)).wait(progress=progress)


def mock(dataset: "RemoteDataset") -> SyntheticData:
    """The dataset's public DP mock: free, and the same rows for every analyst."""
    body = MockRelease.model_validate(dataset.node.request("GET", dataset.endpoint("/mock")))
    frame = frame_from_table(body.table, dataset.schema)
    frame.attrs.update({"dataset": body.info.dataset, "mock": True, **body.info.model_dump(mode="json")})
    report = FidelityReport(body.report, epsilon_charged=0.0, replayed=True,
                            free_because=f"public mock; its owner paid epsilon={body.info.epsilon:g} once")
    return SyntheticData(frame, report, dataset.schema, dp=True, epsilon=body.info.epsilon, kind="mock",
                         released=body.info)


# ---------------------------------------------------------------- the handle's methods


class SynthesisMethods:
    """:class:`~workbench.RemoteDataset` methods of the synthetic-data channel (registered on import)."""

    def synthesize(self, rows: int, epsilon: float, method: str = "mst", *, preview: bool = False,
                   progress: bool = True, **options):
        """DP synthetic rows (``method``: mst, aim, fixed, independent): ``syn.data``, ``syn.report``.
        ``preview=True`` returns the price only. Options: ``columns``, ``bins``, ``marginals``, ``rounds``.

        Privacy guarantee: pure epsilon-DP for the dataset's privacy unit, charged once; see docs/synthesis.md.
        """
        return synthesize(self, rows, epsilon, method, preview=preview, progress=progress, **options)

    def synthesize_preview(self, rows: int, epsilon: float, method: str = "mst", **options):
        """The price and planned noise of :meth:`synthesize`. Spends nothing."""
        return synthesis(self, rows, epsilon, method, **options).preview()

    def synthesize_sdv(self, synthesizer: str = "GaussianCopula", rows: int = 1000, **options):
        """SDV fitted on the REAL rows (not DP): only where the owner allows it, held for an owner's review."""
        return sdv_on_real(self, synthesizer, rows, **options)

    def mock(self):
        """The dataset's public DP mock (free, the same for every analyst)."""
        return mock(self)


register(RemoteDataset, SynthesisMethods)
