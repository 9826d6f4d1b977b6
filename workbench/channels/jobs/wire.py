"""Wire models of the code-job channel, shared by the notebook side and the node.

The code travels as text (a notebook's JSON or a ``.py`` file); the node never
imports or evaluates it, it only stores it, shows it to owners and runs it in
the sandbox once approved. Parameters are JSON data, not code.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from ...protocol import Identifier

MAX_CODE_CHARS = 400_000
OUTPUT_TYPES = {"csv": "text/csv", "json": "application/json", "txt": "text/plain", "md": "text/markdown",
                "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "svg": "image/svg+xml"}
LOG_TYPES = {"executed.ipynb": "application/x-ipynb+json", "job.log": "text/plain"}

CodeKind = Literal["ipynb", "py"]
OutputName = Annotated[str, StringConstraints(
    pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,80}\.(csv|json|txt|md|png|jpg|jpeg|svg)$")]
Scalar = Union[bool, int, float, str, None]
ParameterValue = Union[Scalar, list[Scalar], dict[str, Scalar]]
JobStatus = Literal["pending", "approved", "running", "held", "released", "rejected", "failed", "withheld"]
OutputStatus = Literal["pending", "approved", "rejected"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobSubmission(_Model):
    """What an analyst submits: the code as text, its parameters and the outputs it will write."""

    code: str = Field(max_length=MAX_CODE_CHARS)
    code_name: str = Field("analysis.ipynb", min_length=1, max_length=200)
    kind: CodeKind
    parameters: dict[Identifier, ParameterValue] = Field(default_factory=dict, max_length=50)
    outputs: list[OutputName] = Field(min_length=1, max_length=50)
    purpose: str = Field("", max_length=500)
    note: str = Field("", max_length=2000)
    grant_id: int | None = None
    dp_epsilon: float = Field(0.0, ge=0, le=100)

    @field_validator("code", "code_name", "purpose", "note")
    @classmethod
    def _utf8(cls, text: str) -> str:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid UTF-8 text") from None
        return text

    @field_validator("outputs")
    @classmethod
    def _unique(cls, names: list[str]) -> list[str]:
        if len(set(names)) != len(names):
            raise ValueError("output names must be unique")
        return names

    @field_validator("parameters")
    @classmethod
    def _not_reserved(cls, parameters: dict) -> dict:
        reserved = {"data_path", "output_dir"} & set(parameters)
        if reserved:
            raise ValueError(f"{', '.join(sorted(reserved))} is set by the node")
        return parameters


class Check(_Model):
    """One automatic disclosure check on one output."""

    check: str
    ok: bool
    detail: str


class JobOutput(_Model):
    """One file a job wrote (or its log), held until an owner releases it."""

    name: str
    media_type: str
    size: int
    sha256: str | None
    log: bool = False
    problem: str | None = None  # missing, too large, not a regular file: nothing is held
    checks: list[Check] = Field(default_factory=list)
    flagged: bool = False
    review_id: int | None = None
    status: OutputStatus | None = None
    preview: str | None = None  # owners only: the start of a text output, or an image as a data: URL


class DPUse(_Model):
    release_id: int
    kind: str
    epsilon: float
    delta: float


class CodeJobInfo(_Model):
    job_id: int
    user: str
    dataset: str
    dataset_version: str
    code_name: str
    kind: CodeKind
    code_hash: str
    approval_hash: str
    job_hash: str
    parameters: dict
    outputs: list[str]
    purpose: str
    note: str
    grant_id: int | None
    dp_epsilon: float
    dp_spent: float
    status: JobStatus
    error: str | None
    approved_by: str | None
    approved_at: datetime | None
    approved_with_job: int | None  # the job whose approval this one reuses (same code, parameters, outputs)
    reason: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    results: list[JobOutput]
    dp_releases: list[DPUse]
    code: str | None = None  # in the detailed view
    previous_approved_job: int | None = None  # owners: the last approved version of this code
    diff: str | None = None  # owners: unified diff of the code against it


class Decision(_Model):
    reason: str = Field("", max_length=2000)


class OutputDecision(_Model):
    outputs: list[str] | None = None  # None: every held output
    reason: str = Field("", max_length=2000)


class CollectedOutput(_Model):
    """A released output, as the analyst receives it (through the gate, naming a grant, at zero DP cost)."""

    job_id: int
    name: str
    media_type: str
    content_b64: str
    sha256: str
    checks: list[Check]
    release_id: int
    grant_id: int | None
    replayed: bool
