"""One node's part of one training round, run in a worker process next to the data.

Privacy guarantee: for a privacy unit that contributes at most ``k`` rows,
every value this function returns is post-processing of Gaussian mechanisms
on sums with bounded L2 sensitivity (add/remove one person):

* the row count (sensitivity ``k``), noise ``N(0, (k·σ_count)²)`` — first round only;
* the metric sums of the incoming model (per-row loss clipped to [0, 1] after
  scaling, and correct/incorrect: sensitivity ``k·√2``), noise ``k·√2·σ_metrics``;
* each local step's sum of per-row gradients clipped to L2 norm ``C``
  (sensitivity ``k·C``), noise ``k·C·σ_grad`` per coordinate.

The σ's come from :func:`workbench.channels.fl.accountant.plan_job`, which composes
them exactly (Gaussian DP); the node charges the round through the gate before
this runs. The un-noised sums never leave this function. Noise is drawn from a
generator seeded by the OS (``secrets``), never from global NumPy state.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import numpy as np

from workbench.node.data import check_stamp, file_stamp, scan
from workbench.protocol import DatasetInfo
from workbench.channels.fl.trainers import FeatureMap, get_trainer

__all__ = ["local_round"]


_CACHE: dict[tuple, dict[str, Any]] = {}


def _load(payload: dict, fmap: FeatureMap) -> dict[str, Any]:
    """The scaled design matrix and target, cached per file state and features in this worker process.

    The entry also keeps what trainers precompute from the rows (``prepared``),
    so a job's later rounds on this worker read and scale nothing again.
    """
    stamp = file_stamp(payload["path"])
    check_stamp(payload["path"], payload.get("stamp"))  # the file the node priced and labelled, or a refusal
    key = (payload["path"], *stamp, repr(fmap.as_dict()), repr(payload.get("consent")))
    hit = _CACHE.get(key)
    if hit is None:
        X, y = _read(payload, fmap)
        hit = {"X": X, "y": y, "prepared": {}}
        _CACHE.clear()  # one dataset at a time: bounded memory
        _CACHE[key] = hit
    return hit


def _read(payload: dict, fmap: FeatureMap) -> tuple[np.ndarray, np.ndarray]:
    columns = list(dict.fromkeys([*fmap.x, fmap.y]))
    frame = scan(payload["path"], payload["format"], DatasetInfo.model_validate(payload["info"]), columns,
                 payload.get("consent")).collect()
    raw = {c: frame[c].to_numpy() if frame[c].dtype.is_numeric() else frame[c].to_list() for c in fmap.x}
    X = fmap.transform(raw)
    y = fmap.target(frame[fmap.y].to_list())
    keep = ~np.isnan(y)  # rows without a target are skipped (a public rule, applied the same everywhere)
    return X[keep], y[keep]


def local_round(payload: dict[str, Any]) -> dict[str, Any]:
    """Noisy local training from the incoming global weights; returns only noised quantities."""
    trainer = get_trainer(payload["model"])
    fmap = FeatureMap.from_dict(payload["features"])
    hp = payload["hyperparameters"]
    k = float(payload["max_contributions"])
    rng = np.random.default_rng(secrets.randbits(128))
    data = _load(payload, fmap)
    X, y = data["X"], data["y"]
    if trainer.name not in data["prepared"]:
        data["prepared"][trainer.name] = trainer.prepare(X)
    prepared = data["prepared"][trainer.name]
    weights = [np.asarray(w, dtype=float) for w in payload["weights"]]
    shapes = [w.shape for w in weights]

    count = payload.get("count")
    if count is None:
        count = float(len(y) + rng.normal(0.0, k * payload["sigma_count"]))
    n_hat = max(count, 1.0)

    # Metrics of the incoming (global) model on this node's rows: noisy sums / noisy count.
    sums = trainer.per_example_metrics(weights, X, y).sum(axis=0) if len(y) else np.zeros(2)
    sums = sums + rng.normal(0.0, k * math.sqrt(2) * payload["sigma_metrics"], size=2)
    metrics = {"loss": float(max(sums[0], 0.0) * trainer.loss_cap / n_hat)}
    if trainer.task == "classification":
        metrics["accuracy"] = float(min(max(sums[1] / n_hat, 0.0), 1.0))

    # Local steps of noisy full-batch gradient descent (per-row clipping, Gaussian noise on the sum),
    # on the parameters flattened into one vector.
    clip = hp["clip_norm"]
    theta = np.concatenate([w.ravel() for w in weights])
    l2 = hp["l2"] * trainer.l2_mask(fmap.dim, hp)
    velocity = np.zeros_like(theta)
    for _ in range(payload["local_steps"]):
        if len(y):
            total = trainer.clipped_grad_sum(weights, X, y, clip, prepared)
        else:
            total = np.zeros_like(theta)
        total = total + rng.normal(0.0, k * clip * payload["sigma_grad"], size=theta.size)
        step = total / n_hat + l2 * theta
        velocity = hp["momentum"] * velocity + step
        theta = theta - hp["learning_rate"] * velocity
        weights = _unflatten(theta, shapes)
    bound = hp["weight_bound"]
    weights = [np.clip(w, -bound, bound) for w in weights]
    return {"weights": [w.tolist() for w in weights], "count": float(count), "metrics": metrics}


def _unflatten(theta: np.ndarray, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    out, start = [], 0
    for shape in shapes:
        size = int(np.prod(shape))
        out.append(theta[start:start + size].reshape(shape))
        start += size
    return out
