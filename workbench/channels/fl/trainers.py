"""The built-in trainers: models an owner can review, chosen by name with JSON hyperparameters.

The analyst sends a trainer *name* and a small JSON object of hyperparameters;
no code crosses the boundary. The linear models are plain NumPy and the small
neural network (``mlp``) a few lines of torch (CPU, imported only when an MLP
trains), so an owner can read all of it. Features are scaled to [-1, 1] by the columns' PUBLIC bounds
(bools to -1/1, categories one-hot from their PUBLIC category list); nothing
about the scaling is derived from the data.

Per-example gradients are computed in closed form (linear models) or with
``torch.func`` (MLP), so the node can clip each person's contribution
(DP-SGD style) before adding noise (see :func:`workbench.channels.fl.worker.local_round`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workbench.errors import InvalidQuery
from workbench.protocol import ColumnInfo, DatasetInfo

__all__ = ["Hyperparameters", "MLPTrainer", "TRAINERS", "Trainer", "FeatureMap", "feature_map", "get_trainer"]


class Hyperparameters(BaseModel):
    """What an analyst may tune (JSON). Everything else is fixed by the trainer."""

    model_config = ConfigDict(extra="forbid")
    #: default: the trainer's own (2.0 for logistic, 0.5 for linear regression: 4x the curvature)
    learning_rate: float | None = Field(None, gt=0, le=20)
    local_steps: int = Field(10, ge=1, le=50)
    momentum: float = Field(0.9, ge=0, lt=1)
    clip_norm: float = Field(1.0, gt=0, le=100)
    l2: float = Field(1e-3, ge=0, le=10)
    weight_bound: float = Field(8.0, gt=0, le=64)
    #: hidden units of model="mlp" (default 16); refused for the linear models
    hidden: int | None = Field(None, ge=1, le=128)


@dataclass(frozen=True)
class FeatureMap:
    """How raw columns become model inputs in [-1, 1] (public: bounds and categories only)."""

    x: tuple[str, ...]
    names: tuple[str, ...]
    specs: tuple[tuple, ...]  # per x column: ("num", lo, hi) | ("bool",) | ("cat", categories)
    y: str
    y_spec: tuple

    def as_dict(self) -> dict:
        return {"x": list(self.x), "names": list(self.names), "specs": [list(s) for s in self.specs],
                "y": self.y, "y_spec": list(self.y_spec)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureMap":
        return cls(tuple(d["x"]), tuple(d["names"]), tuple(tuple(s) for s in d["specs"]), d["y"], tuple(d["y_spec"]))

    @property
    def dim(self) -> int:
        return len(self.names)

    def transform(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """Raw column arrays → an (n, dim) float matrix in [-1, 1]; missing values become 0."""
        parts = []
        for name, spec in zip(self.x, self.specs):
            raw = columns[name]
            if spec[0] == "num":
                lo, hi = spec[1], spec[2]
                v = np.asarray(raw, dtype=float)
                v = np.clip(2 * (v - lo) / (hi - lo) - 1, -1, 1)
                parts.append(np.nan_to_num(v, nan=0.0)[:, None])
            elif spec[0] == "bool":
                v = np.array([np.nan if r is None else float(bool(r)) for r in raw], dtype=float)
                parts.append(np.nan_to_num(2 * v - 1, nan=0.0)[:, None])
            else:
                cats = list(spec[1])
                block = np.zeros((len(raw), len(cats)))
                index = {c: i for i, c in enumerate(cats)}
                for row, value in enumerate(raw):
                    i = index.get(value)
                    if i is not None:
                        block[row, i] = 1.0
                parts.append(block)
        return np.hstack(parts) if parts else np.zeros((len(next(iter(columns.values()))), 0))

    def target(self, raw) -> np.ndarray:
        """The target column → floats: {0, 1} for classification, [-1, 1] for regression (NaN if missing)."""
        kind = self.y_spec[0]
        if kind == "binary":
            positive = self.y_spec[1]
            return np.array([np.nan if r is None else float(r == positive) for r in raw], dtype=float)
        lo, hi = self.y_spec[1], self.y_spec[2]
        v = np.array([np.nan if r is None else float(r) for r in raw], dtype=float)
        return np.clip(2 * (v - lo) / (hi - lo) - 1, -1, 1)

    def untarget(self, value: np.ndarray) -> np.ndarray:
        """Regression predictions back to the target's units."""
        lo, hi = self.y_spec[1], self.y_spec[2]
        return (np.asarray(value) + 1) / 2 * (hi - lo) + lo


def _column(info: DatasetInfo, name: str) -> ColumnInfo:
    for column in info.columns:
        if column.name == name:
            return column
    raise InvalidQuery(f"Dataset '{info.name}' has no column '{name}'.", code="unknown_column")


def _x_spec(column: ColumnInfo) -> tuple[tuple, list[str]]:
    if column.type in ("int", "float"):
        if column.bounds is None:
            raise InvalidQuery(f"Column '{column.name}' has no public bounds; a model cannot use it.",
                               code="bad_bounds")
        return ("num", float(column.bounds[0]), float(column.bounds[1])), [column.name]
    if column.type == "bool":
        return ("bool",), [column.name]
    if column.type == "category" and column.categories:
        if len(column.categories) > 64:
            raise InvalidQuery(f"Column '{column.name}' has too many categories for a feature.", code="wrong_type")
        return ("cat", list(column.categories)), [f"{column.name}={c}" for c in column.categories]
    raise InvalidQuery(f"Column '{column.name}' ({column.type}) cannot be a model feature.", code="wrong_type")


def feature_map(info: DatasetInfo, task: str, x: list[str], y: str) -> FeatureMap:
    """Validate features and target against the PUBLIC schema and build the scaling."""
    if not x:
        raise InvalidQuery("Name at least one feature in x=[...].", code="invalid_query")
    if y in x:
        raise InvalidQuery(f"The target '{y}' cannot also be a feature.", code="invalid_query")
    if len(set(x)) != len(x):
        raise InvalidQuery("A feature is named twice in x.", code="invalid_query")
    specs, names = [], []
    for name in x:
        column = _column(info, name)
        if column.name == info.privacy_unit.id_column or column.type in ("id", "string"):
            raise InvalidQuery(f"Column '{name}' is an identifier or free text; it cannot be a feature.",
                               code="wrong_type")
        spec, cols = _x_spec(column)
        specs.append(spec)
        names.extend(cols)
    target = _column(info, y)
    if task == "classification":
        if target.type == "bool":
            y_spec = ("binary", True)
        elif target.type == "category" and target.categories and len(target.categories) == 2:
            y_spec = ("binary", target.categories[1])
        elif target.type == "int" and target.bounds is not None and tuple(target.bounds) == (0, 1):
            y_spec = ("binary", 1)
        else:
            raise InvalidQuery(f"A classification model needs a two-valued target; '{y}' is {target.type}.",
                               code="wrong_type")
    else:
        if target.type not in ("int", "float") or target.bounds is None:
            raise InvalidQuery(f"Linear regression needs a numeric target with public bounds; '{y}' is not.",
                               code="wrong_type")
        y_spec = ("num", float(target.bounds[0]), float(target.bounds[1]))
    return FeatureMap(tuple(x), tuple(names), tuple(specs), y, y_spec)


# ---------------------------------------------------------------- the models


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class Trainer:
    """A generalized linear model: weights = [coefficients (dim,), intercept (1,)]."""

    name: str
    task: str  # "classification" | "regression"
    #: per-record loss is clipped to [0, loss_cap] before it is summed (bounded sensitivity)
    loss_cap: float
    link: Callable[[np.ndarray], np.ndarray]
    learning_rate: float

    def init(self, dim: int, hp: dict | None = None) -> list[np.ndarray]:
        return [np.zeros(dim), np.zeros(1)]

    def check_size(self, dim: int, hp: dict | None = None) -> None:
        """Linear models are small enough for any feature set a node accepts."""

    def shapes(self, dim: int, hp: dict | None = None) -> list[tuple[int, ...]]:
        return [(dim,), (1,)]

    def l2_mask(self, dim: int, hp: dict | None = None) -> np.ndarray:
        """1 for the parameters L2 regularisation applies to (coefficients), 0 for the intercept."""
        return np.concatenate([np.ones(dim), np.zeros(1)])

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """What :meth:`clipped_grad_sum` can reuse across steps and rounds: each row's ``sqrt(|x|² + 1)``."""
        return np.sqrt(np.einsum("ij,ij->i", X, X) + 1.0)

    def predict_raw(self, weights: list[np.ndarray], X: np.ndarray) -> np.ndarray:
        return self.link(X @ weights[0] + weights[1][0])

    def per_example_grads(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, dim+1): gradient of each record's loss w.r.t. [coefficients, intercept]."""
        residual = self.predict_raw(weights, X) - y
        return np.hstack([X * residual[:, None], residual[:, None]])

    def clipped_grad_sum(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray, clip: float,
                         row_norms: np.ndarray | None = None) -> np.ndarray:
        """(dim+1,): the sum over records of each record's gradient clipped to L2 norm ``clip``.

        Same numbers as clipping the rows of :meth:`per_example_grads` and summing
        them, without building that (n, dim+1) matrix: a record's gradient is
        ``r·[x, 1]``, so its norm is ``|r|·sqrt(|x|² + 1)`` (``row_norms``, which
        depend only on the data and can be cached) and clipping only rescales ``r``.
        """
        if row_norms is None:
            row_norms = self.prepare(X)
        residual = self.predict_raw(weights, X) - y
        scaled = residual * np.minimum(1.0, clip / np.maximum(np.abs(residual) * row_norms, 1e-12))
        return np.concatenate([X.T @ scaled, [scaled.sum()]])

    def per_example_metrics(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, 2) in [0, 1]: clipped loss / loss_cap, and correct (classification) or 0."""
        return _metrics(self.task, self.loss_cap, self.predict_raw(weights, X), y)


def _metrics(task: str, loss_cap: float, pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per record: loss clipped to [0, loss_cap] and scaled to [0, 1]; 1 if classified right (else 0)."""
    if task == "classification":
        p = np.clip(pred, 1e-12, 1 - 1e-12)
        loss = -(y * np.log(p) + (1 - y) * np.log(1 - p))
        correct = ((pred >= 0.5) == (y >= 0.5)).astype(float)
    else:
        loss = (pred - y) ** 2
        correct = np.zeros_like(loss)
    return np.stack([np.clip(loss, 0, loss_cap) / loss_cap, correct], axis=1)


@dataclass(frozen=True)
class MLPTrainer:
    """A small neural network for a two-valued target: inputs -> ``hidden`` tanh units -> P(positive).

    weights = [W1 (hidden, dim), b1 (hidden,), W2 (1, hidden), b2 (1,)], the
    layout of ``torch.nn.Linear``. Training uses torch on the CPU: each record's
    gradient of its log-loss comes from ``torch.func.vmap(grad(...))``, is
    clipped to ``clip_norm`` and only then summed (noise is added by the
    caller, exactly as for the linear models). Predicting needs NumPy only.
    """

    name: str = "mlp"
    task: str = "classification"
    loss_cap: float = 4.0
    learning_rate: float = 1.0
    default_hidden: int = 16
    #: at most this many per-record gradient values in memory at once (float64: 128 MB)
    batch_values: int = 2 ** 24
    #: a node refuses a larger network (memory and time of per-record gradients)
    max_parameters: int = 20_000

    def hidden(self, hp: dict | None) -> int:
        return int((hp or {}).get("hidden") or self.default_hidden)

    def check_size(self, dim: int, hp: dict | None = None) -> None:
        """Refuse a network whose per-record gradients would be too big for a node's worker."""
        size = sum(int(np.prod(s)) for s in self.shapes(dim, hp))
        if size > self.max_parameters:
            raise InvalidQuery(f"This MLP has {size} parameters ({dim} inputs, {self.hidden(hp)} hidden units); "
                               f"nodes train at most {self.max_parameters}. Use fewer hidden units or features.",
                               code="invalid_query")

    def shapes(self, dim: int, hp: dict | None = None) -> list[tuple[int, ...]]:
        h = self.hidden(hp)
        return [(h, dim), (h,), (1, h), (1,)]

    def init(self, dim: int, hp: dict | None = None) -> list[np.ndarray]:
        """A public, data-independent start (all-zero weights would keep every hidden unit identical).

        Glorot-uniform weights from a fixed seed, zero biases: every node and the
        analyst compute the same start from the job's public shape alone.
        """
        h = self.hidden(hp)
        rng = np.random.default_rng(5)
        a1, a2 = np.sqrt(6 / (dim + h)), np.sqrt(6 / (h + 1))
        return [rng.uniform(-a1, a1, (h, dim)), np.zeros(h), rng.uniform(-a2, a2, (1, h)), np.zeros(1)]

    def l2_mask(self, dim: int, hp: dict | None = None) -> np.ndarray:
        """1 for the weight matrices (L2-regularised), 0 for the biases."""
        h = self.hidden(hp)
        return np.concatenate([np.ones(h * dim), np.zeros(h), np.ones(h), np.zeros(1)])

    def prepare(self, X: np.ndarray) -> None:
        return None

    def predict_raw(self, weights: list[np.ndarray], X: np.ndarray) -> np.ndarray:
        W1, b1, W2, b2 = (np.asarray(w, dtype=float) for w in weights)
        return _sigmoid(np.tanh(X @ W1.T + b1) @ W2[0] + b2[0])

    def _torch_grads(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray):
        """Per-record gradients as one (n, n_params) float64 torch tensor, in ``weights`` order."""
        import torch
        from torch.func import grad, vmap

        torch.set_num_threads(1)  # a node's worker shares the machine with the node and other workers
        params = tuple(torch.as_tensor(np.asarray(w, dtype=float)) for w in weights)

        def loss(p, x, t):
            W1, b1, W2, b2 = p
            logit = torch.tanh(x @ W1.T + b1) @ W2[0] + b2[0]
            return torch.nn.functional.binary_cross_entropy_with_logits(logit, t)

        per_record = vmap(grad(loss), in_dims=(None, 0, 0))
        chunk = max(1, min(8192, self.batch_values // sum(int(p.numel()) for p in params)))
        out = []
        for start in range(0, len(y), chunk):
            xs = torch.as_tensor(X[start:start + chunk], dtype=torch.float64)
            ts = torch.as_tensor(y[start:start + chunk], dtype=torch.float64)
            grads = per_record(params, xs, ts)
            out.append(torch.cat([g.reshape(len(ts), -1) for g in grads], dim=1))
        if not out:
            return torch.zeros((0, sum(int(np.prod(np.shape(w))) for w in weights)), dtype=torch.float64)
        return torch.cat(out)

    def per_example_grads(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, n_params): gradient of each record's log-loss w.r.t. all weights, flattened in order."""
        return self._torch_grads(weights, X, y).numpy()

    def clipped_grad_sum(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray, clip: float,
                         prepared: None = None) -> np.ndarray:
        """The sum over records of each record's gradient clipped to L2 norm ``clip``."""
        import torch

        grads = self._torch_grads(weights, X, y)
        norms = torch.linalg.vector_norm(grads, dim=1)
        scale = torch.clamp(clip / torch.clamp(norms, min=1e-12), max=1.0)
        return (grads * scale[:, None]).sum(dim=0).numpy()

    def per_example_metrics(self, weights: list[np.ndarray], X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """(n, 2) in [0, 1]: clipped log-loss / loss_cap, and correct."""
        return _metrics(self.task, self.loss_cap, self.predict_raw(weights, X), y)


TRAINERS: dict[str, Trainer | MLPTrainer] = {
    "logistic_regression": Trainer("logistic_regression", "classification", 4.0, _sigmoid, 2.0),
    "linear_regression": Trainer("linear_regression", "regression", 4.0, lambda z: z, 0.5),
    "mlp": MLPTrainer(),
}


def get_trainer(name: str) -> Trainer | MLPTrainer:
    try:
        return TRAINERS[name]
    except KeyError:
        raise InvalidQuery(f"Unknown model {name!r}; built-in models: {', '.join(sorted(TRAINERS))}. "
                           "Other Flower apps need the node owner to allow their FAB hash.",
                           code="fl_unknown_model") from None


def hyperparameters(raw: dict[str, Any] | None, trainer: Trainer | MLPTrainer | None = None) -> Hyperparameters:
    """Validate the analyst's JSON hyperparameters; fill the trainer's defaults."""
    try:
        hp = Hyperparameters.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidQuery(f"Bad hyperparameters: {problems}", code="invalid_query") from None
    if trainer is None:
        return hp
    update: dict[str, Any] = {}
    if hp.learning_rate is None:
        update["learning_rate"] = trainer.learning_rate
    if isinstance(trainer, MLPTrainer):
        update["hidden"] = trainer.hidden(hp.model_dump())
    elif hp.hidden is not None:
        raise InvalidQuery(f"Bad hyperparameters: hidden applies only to model='mlp', not {trainer.name}.",
                           code="invalid_query")
    return hp.model_copy(update=update) if update else hp
