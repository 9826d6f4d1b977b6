"""A dataset's code-job settings: the ``[datasets.<name>.code_jobs]`` table of the node config.

Public metadata like the rest of a dataset's entry: analysts see the limits
their code will run under and the disclosure thresholds its outputs must meet.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class CodeJobSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Whether analysts may submit code to run beside this dataset (every job still needs an owner's approval).
    enabled: bool = True
    #: Disclosure checks: a table cell (a group of input rows) smaller than this is flagged.
    min_cell_count: int = Field(10, ge=1)
    #: Dominance rule (n, k): a cell whose ``dominance_n`` largest contributors make up more than
    #: ``dominance_k`` of its total is flagged.
    dominance_n: int = Field(2, ge=1)
    dominance_k: float = Field(0.85, gt=0, le=1)
    #: Sandbox limits.
    cpu_seconds: int = Field(300, ge=1)
    memory_mb: int = Field(2048, ge=256)
    wall_seconds: float = Field(600.0, gt=0)
    processes: int = Field(256, ge=16)
    work_mb: int = Field(512, ge=16)
    max_output_mb: float = Field(5.0, gt=0)
    max_outputs: int = Field(10, ge=1, le=50)
    #: Most epsilon one job may spend through its DP channel (the owner approves it with the code).
    max_dp_epsilon: float = Field(1.0, ge=0)
