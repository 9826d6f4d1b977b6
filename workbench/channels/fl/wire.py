"""Wire models of the federated-learning channel (shared by client and node).

A training job is JSON: a built-in model *name*, column names, numbers. The
Flower messages of a round travel as Flower's own protobuf bytes (data, not
code), base64 in a JSON envelope with a size limit.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from workbench.protocol import Finite, Identifier, Strict

__all__ = ["FLJobInfo", "FLJobRequest", "FLMessage", "TrainSpec"]

HyperValue = float | int | bool


class TrainSpec(Strict):
    """What to train: a built-in model by name, on named columns, for a number of rounds."""

    model: str = Field(max_length=64, pattern=r"^[a-z_][a-z0-9_]{0,63}$")
    y: Identifier
    x: list[Identifier] = Field(min_length=1, max_length=64)
    rounds: int = Field(ge=1, le=200)
    epsilon: Finite = Field(gt=0.0, le=100.0)
    delta: Finite = Field(gt=0.0, lt=0.01)
    secure_aggregation: bool = False
    hyperparameters: dict[Identifier, HyperValue] = Field(default_factory=dict, max_length=16)


class FLJobRequest(Strict):
    spec: TrainSpec
    grant_id: int | None = Field(None, ge=1)
    #: how many nodes take part (checked against SecAgg+ parameters the aggregator sends)
    nodes: int = Field(1, ge=1, le=1000)


class FLJobInfo(Strict):
    """A job as a node sees it: public plan, progress and what it has charged so far."""

    job_id: str
    node: str
    dataset: str
    dataset_version: str
    spec: TrainSpec
    features: list[str]
    plan: dict[str, Any]
    rounds_done: int
    epsilon_spent: float
    delta_spent: float
    grant_id: int | None
    status: Literal["ready", "running", "done", "refused"]


class FLMessage(Strict):
    """One Flower message (protobuf, base64) for the job's ClientApp on the node, or its reply."""

    message: str = Field(max_length=8_000_000)
