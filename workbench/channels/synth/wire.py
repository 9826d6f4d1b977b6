"""Wire models of the synthetic-data channel (shared by client and node).

Like :mod:`workbench.protocol`, every model forbids unknown fields and
imports neither FastAPI nor the database.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from workbench.protocol import PROTOCOL_VERSION, Budget, ErrorBody, Finite, Identifier, ReleaseReceipt, RequestId, Strict, Table

Method = Literal["mst", "aim", "fixed", "independent"]
SDVName = Literal["GaussianCopula", "CTGAN", "TVAE", "CopulaGAN"]
JobStatus = Literal["queued", "running", "done", "failed", "cancelled"]


class SynthSpec(Strict):
    """What to synthesize. Everything here is public: the node derives keys and bins from the catalogue.

    ``method``: ``mst`` (MST picks a spanning tree of column pairs), ``aim`` (AIM picks
    marginals adaptively from a workload), ``fixed`` (measures exactly ``marginals``; default
    all pairs) or ``independent`` (one DP histogram per column, sampled independently).
    ``bins``: equal-width bins over each numeric column's public bounds.
    """

    method: Method = "mst"
    rows: int = Field(ge=1, le=10_000_000)
    columns: list[Identifier] | None = Field(None, min_length=1, max_length=64)
    bins: int = Field(16, ge=2, le=100)
    marginals: list[list[Identifier]] | None = Field(None, min_length=1, max_length=200)
    rounds: int | None = Field(None, ge=1, le=200, description="AIM only: the most selection rounds")


class SynthRequest(Strict):
    protocol: str = PROTOCOL_VERSION
    spec: SynthSpec
    epsilon: Finite = Field(gt=0.0, le=100.0)
    grant_id: int | None = Field(None, ge=1)
    request_id: RequestId | None = None


class PlannedMeasurement(Strict):
    """One marginal the method will (or may) measure, and its approximate noise before anything is spent."""

    columns: list[str]
    cells: int
    epsilon: float | None = None
    noise_std: float | None = None
    adaptive: bool = False


class SynthPreview(Strict):
    dataset: str
    dataset_version: str
    spec: SynthSpec
    columns: list[str]
    dropped: dict[str, str]
    epsilon: float
    delta: float
    grant_id: int | None
    measurements: list[PlannedMeasurement]
    note: str
    max_rows: int
    time_limit_s: float
    budget_left_before: Budget | None = None
    budget_left_after: Budget | None = None
    would_replay: bool = False


class SynthRelease(ReleaseReceipt):
    kind: str
    dp: bool
    spec: dict[str, Any]
    table: Table
    report: dict[str, Any]
    budget_left: Budget | None = None


class SynthJob(Strict):
    job_id: str
    dataset: str
    kind: str
    status: JobStatus
    phase: str = ""
    progress: float = 0.0
    elapsed_s: float = 0.0
    error: ErrorBody | None = None
    release: SynthRelease | None = None
    review: dict[str, Any] | None = None  # SDV on real rows: the held release waiting for an owner


class SDVSpec(Strict):
    """An SDV synthesizer fitted on the REAL rows (a non-DP release; the owner must allow it)."""

    synthesizer: SDVName = "GaussianCopula"
    rows: int = Field(ge=1, le=10_000_000)
    columns: list[Identifier] | None = Field(None, min_length=1, max_length=64)
    epochs: int = Field(50, ge=1, le=1000, description="CTGAN/TVAE/CopulaGAN only")


class SDVRequest(Strict):
    protocol: str = PROTOCOL_VERSION
    spec: SDVSpec
    grant_id: int | None = Field(None, ge=1)
    request_id: RequestId | None = None


class MockInfo(Strict):
    """The public DP mock of a dataset: paid once from its lifetime budget, free and identical for everyone."""

    dataset: str
    dataset_version: str
    current: bool
    method: str
    epsilon: float
    rows: int
    published_at: datetime
    published_by: str


class MockRelease(Strict):
    info: MockInfo
    table: Table
    report: dict[str, Any]
