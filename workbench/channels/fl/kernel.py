"""The analyst's half of federated training: start a job, watch it, get the model.

>>> job = fed.dataset("patients").train(model="logistic_regression", y="readmitted",
...                                     x=["age", "bmi", "visits"], rounds=5, epsilon=2.0, delta=1e-6)  # doctest: +SKIP
>>> job.progress()       # tqdm, one step per round, noisy metrics as they arrive   # doctest: +SKIP
>>> model = job.result() # doctest: +SKIP
>>> model.predict(my_df); model.plot()  # doctest: +SKIP

Privacy guarantee: what comes back is the aggregate of the nodes' DP-noised
updates (only their sum under secure aggregation), their DP-noised metrics
and counts, and each node's account of what it charged. Each node charged
its own ledger for every round it answered.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from pydantic import ValidationError

from workbench.client.federation import FederatedDataset
from workbench.client.handles import register
from workbench.errors import InvalidQuery, NotSupported, WorkbenchError, error_class_for
from workbench.channels.fl.wire import FLJobInfo, TrainSpec
from workbench.channels.fl.trainers import FeatureMap, feature_map, get_trainer
from workbench.channels.fl.trainers import hyperparameters as parse_hyperparameters


__all__ = ["FederatedModel", "TrainingJob", "train"]


def train(fed: "FederatedDataset", model: str, y: str, x: Sequence[str], *, rounds: int = 5, epsilon: float = 1.0,
          delta: float = 1e-6, secure_aggregation: bool = False, hyperparameters: dict | None = None,
          engine: str = "simulation", superlink: str | None = None, start: bool = True) -> "TrainingJob":
    """Train a built-in model across the federation; returns a running :class:`TrainingJob`.

    ``epsilon``/``delta`` are what *each node* spends on its own data for the
    whole job (split over the rounds by the node's accountant). ``engine`` is
    ``"simulation"`` (Flower's simulation runtime in this process; the default)
    or ``"deployment"`` (a running ``workbench fl superlink`` at ``superlink``,
    with every node's SuperNode connected to it).

    Privacy guarantee: only DP-noised, aggregated results return (see module docs).
    """
    if engine not in ("simulation", "deployment"):
        raise InvalidQuery("engine must be 'simulation' or 'deployment'.", code="invalid_query")
    if engine == "deployment" and not superlink:
        raise InvalidQuery("The deployment engine needs superlink='host:port' (its Control API).",
                           code="invalid_query")
    try:
        spec = TrainSpec(model=model, y=y, x=list(x), rounds=rounds, epsilon=epsilon, delta=delta,
                         secure_aggregation=secure_aggregation, hyperparameters=dict(hyperparameters or {}))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise InvalidQuery(f"Bad training request: {problems}", code="invalid_query") from None
    trainer = get_trainer(model)
    hp = parse_hyperparameters(spec.hyperparameters, trainer)
    fmap = feature_map(fed.schema, trainer.task, list(spec.x), spec.y)
    trainer.check_size(fmap.dim, hp.model_dump())
    if secure_aggregation and len(fed.handles) < 2:
        raise InvalidQuery("Secure aggregation needs at least two nodes (with one, the sum is the update); "
                           "use secure_aggregation=False.", code="fl_secagg_needs_nodes")
    jobs = []
    for handle in fed.handles:
        raw = handle.node.request("POST", f"/datasets/{_quote(handle.name)}/fl/jobs",
                                  json={"spec": spec.model_dump(mode="json"), "grant_id": handle.grant_id,
                                        "nodes": len(fed.handles)})
        info = FLJobInfo.model_validate(raw)
        if info.features != list(fmap.names):
            raise InvalidQuery(f"Node {handle.node.url} built different features: {info.features}.",
                               code="schema_mismatch")
        jobs.append(info)
    config = {"rounds": spec.rounds, "nodes": len(fed.handles), "secure_aggregation": spec.secure_aggregation,
              "shapes": [list(s) for s in trainer.shapes(fmap.dim, hp.model_dump())],
              "initial": [w.tolist() for w in trainer.init(fmap.dim, hp.model_dump())], "weight_bound": hp.weight_bound,
              "max_weight": float(max(h.schema.max_rows for h in fed.handles))}
    job = TrainingJob(fed, spec, fmap, jobs, config, engine, superlink)
    if start:
        job.start()
    return job


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


class TrainingJob:
    """A training job running in the background. ``progress()`` to watch, ``result()`` for the model."""

    def __init__(self, fed: "FederatedDataset", spec: TrainSpec, fmap: FeatureMap, jobs: list[FLJobInfo],
                 config: dict, engine: str, superlink: str | None):
        self.federation = fed
        self.spec = spec
        self.fmap = fmap
        self.jobs = jobs
        self.config = config
        self.engine = engine
        self.superlink = superlink
        self.rounds: list[dict] = []
        self.error: WorkbenchError | None = None
        self._events: "queue.Queue[dict]" = queue.Queue()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.round_times: list[float] = []

    @property
    def job_ids(self) -> dict[str, str]:
        return {info.node: info.job_id for info in self.jobs}

    # ---------------------------------------------------------------- running

    def start(self) -> "TrainingJob":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="workbench-fl-job")
            self._thread.start()
        return self

    def _sink(self, event: dict) -> None:
        now = time.monotonic()
        if event.get("type") == "round":
            last = self.round_times[-1] if self.round_times else self.started_at
            self.round_times.append(now)
            event = dict(event, seconds=now - last)
            self.rounds.append(event)
        elif event.get("type") == "error" and self.error is None:
            code = str(event.get("code", "computation_failed"))
            self.error = error_class_for(code)(str(event.get("message", "The training job failed.")), code=code)
        self._events.put(event)

    def _run(self) -> None:
        self.started_at = time.monotonic()
        try:
            with ExitStack() as stack:
                links = [self._link(handle, info, stack) for handle, info in zip(self.federation.handles, self.jobs)]
                if self.engine == "simulation":
                    from workbench.channels.fl.simulation import run_simulation_job

                    run_simulation_job(links, self.config, self._sink)
                else:
                    from workbench.channels.fl.deployment import run_deployment_job

                    run_deployment_job(self.superlink, self.job_ids, self.config, self._sink)
        except WorkbenchError as exc:
            self._sink({"type": "error", "code": exc.code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001
            self._sink({"type": "error", "code": "computation_failed", "message": f"The engine failed: {exc!r}"[:500]})
        finally:
            if not self.rounds and self.error is None:
                self._sink({"type": "error", "code": "computation_failed", "message": "No round completed."})
            self.finished_at = time.monotonic()
            self._done.set()
            self._events.put({"type": "end"})

    def _link(self, handle, info: FLJobInfo, stack: ExitStack) -> dict:
        if self.engine != "simulation":
            return {}
        node = handle.node
        headers = node.auth_headers()
        if node.embedded:
            from workbench.channels.fl.simulation import serve_embedded

            url = stack.enter_context(serve_embedded(node.asgi_app))
        else:
            url = node.url
        return {"url": url, "job_id": info.job_id, "headers": headers}

    # ---------------------------------------------------------------- watching

    def done(self) -> bool:
        return self._done.is_set()

    def progress(self, timeout: float | None = None) -> pd.DataFrame:
        """Show a progress bar per round (with the DP-noised metrics) until the job ends; returns the metrics."""
        from tqdm.auto import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        bar = tqdm(total=self.spec.rounds, desc=f"training {self.spec.model}", unit="round")
        shown = 0
        try:
            while True:
                while shown < len(self.rounds):
                    summary = _summary(self.rounds[shown])
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in summary.items() if v is not None})
                    shown += 1
                if self._done.is_set() and shown >= len(self.rounds):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                try:
                    self._events.get(timeout=0.2)
                except queue.Empty:
                    pass
        finally:
            bar.close()
        return self.metrics()

    def metrics(self) -> pd.DataFrame:
        """Per round and node: DP-noised loss (and accuracy), noisy count, privacy spent so far."""
        rows = []
        for event in self.rounds:
            for m in event["nodes"]:
                rows.append({"round": event["round"], "node": m.get("node"), "loss": m.get("loss"),
                             "accuracy": m.get("accuracy"), "count": m.get("count"),
                             "epsilon_spent": m.get("epsilon_spent"), "delta_spent": m.get("delta_spent")})
        return pd.DataFrame(rows, columns=["round", "node", "loss", "accuracy", "count", "epsilon_spent",
                                           "delta_spent"])

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None, allow_partial: bool = False) -> "FederatedModel":
        """The trained model (waits for the job). A failed job raises its error unless ``allow_partial``."""
        if not self._done.wait(timeout):
            raise WorkbenchError("The training job is still running.", code="computation_timeout")
        if self.error is not None and not (allow_partial and self.rounds):
            raise self.error
        last = self.rounds[-1]
        privacy = []
        for handle, info in zip(self.federation.handles, self.jobs):
            try:
                now = FLJobInfo.model_validate(handle.node.request("GET", f"/fl/jobs/{info.job_id}"))
                privacy.append({"node": now.node, "rounds": now.rounds_done, "epsilon_spent": now.epsilon_spent,
                                "delta_spent": now.delta_spent, "epsilon_planned": now.spec.epsilon,
                                "grant_id": now.grant_id})
            except WorkbenchError:
                privacy.append({"node": info.node, "rounds": None, "epsilon_spent": None, "delta_spent": None,
                                "epsilon_planned": info.spec.epsilon, "grant_id": info.grant_id})
        return FederatedModel(spec=self.spec, fmap=self.fmap,
                              weights=[np.asarray(w, dtype=float) for w in last["weights"]],
                              history=self.metrics(), privacy=pd.DataFrame(privacy),
                              round_seconds=[e.get("seconds", 0.0) for e in self.rounds], error=self.error)

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        if self.error is not None:
            state = f"failed ({self.error.code})"
        return (f"<TrainingJob {self.spec.model} on {len(self.jobs)} nodes, {len(self.rounds)}/{self.spec.rounds} "
                f"rounds, {state}>")


def _summary(event: dict) -> dict[str, float | None]:
    """Count-weighted mean of the nodes' noisy metrics for one round."""
    nodes = event["nodes"]
    total = sum(max(m.get("count", 1), 1) for m in nodes) or 1
    out = {}
    for key in ("loss", "accuracy"):
        values = [(m[key], max(m.get("count", 1), 1)) for m in nodes if m.get(key) is not None]
        out[key] = sum(v * c for v, c in values) / total if values else None
    return out


@dataclass
class FederatedModel:
    """A model trained across nodes: weights, DP-noised history, privacy spent per node."""

    spec: TrainSpec
    fmap: FeatureMap
    weights: list[np.ndarray]
    history: pd.DataFrame
    privacy: pd.DataFrame
    round_seconds: list[float] = field(default_factory=list)
    error: WorkbenchError | None = None

    @property
    def task(self) -> str:
        return get_trainer(self.spec.model).task

    def coefficients(self) -> pd.Series:
        """Coefficients per model input (features scaled to [-1, 1] by public bounds), and the intercept."""
        if len(self.weights) != 2:
            raise NotSupported(f"A {self.spec.model} has no coefficients; its layers are in .weights.",
                               code="not_supported")
        return pd.Series(list(self.weights[0]) + [float(self.weights[1][0])], index=[*self.fmap.names, "intercept"])

    def _design(self, df: Any) -> np.ndarray:
        if not isinstance(df, pd.DataFrame):
            try:
                df = df.to_pandas()
            except AttributeError:
                df = pd.DataFrame(df)
        missing = [c for c in self.fmap.x if c not in df.columns]
        if missing:
            raise InvalidQuery(f"Your data lacks the model's features {missing}.", code="unknown_column")
        raw = {c: (df[c].to_numpy() if self.fmap.specs[i][0] == "num" else df[c].tolist())
               for i, c in enumerate(self.fmap.x)}
        return self.fmap.transform(raw)

    def predict_proba(self, df: Any) -> np.ndarray:
        """P(positive class) for each row of *your* data (classification models)."""
        if self.task != "classification":
            raise NotSupported("predict_proba is for classification models.", code="not_supported")
        return get_trainer(self.spec.model).predict_raw(self.weights, self._design(df))

    def predict(self, df: Any) -> np.ndarray:
        """Predictions for each row of *your* data: the target's positive value/other value, or a number."""
        trainer = get_trainer(self.spec.model)
        raw = trainer.predict_raw(self.weights, self._design(df))
        if self.task == "classification":
            positive = self.fmap.y_spec[1]
            if isinstance(positive, bool):
                return raw >= 0.5
            return np.where(raw >= 0.5, positive, f"not {positive}")
        return self.fmap.untarget(raw)

    def score(self, df: Any) -> float:
        """Accuracy (classification) or RMSE in the target's units (regression) on *your* data."""
        if self.spec.y not in df.columns:
            raise InvalidQuery(f"Your data lacks the target '{self.spec.y}'.", code="unknown_column")
        truth = self.fmap.target(df[self.spec.y].tolist())
        keep = ~np.isnan(truth)
        if self.task == "classification":
            pred = self.predict_proba(df) >= 0.5
            return float(np.mean(pred[keep] == (truth[keep] >= 0.5)))
        pred = np.asarray(self.predict(df), dtype=float)
        return float(np.sqrt(np.mean((pred[keep] - self.fmap.untarget(truth[keep])) ** 2)))

    def rounds(self) -> pd.DataFrame:
        """Per round: count-weighted noisy loss/accuracy over nodes."""
        if self.history.empty:
            return pd.DataFrame(columns=["round", "loss", "accuracy"])
        rows = []
        for r, group in self.history.groupby("round"):
            w = group["count"].clip(lower=1).to_numpy(dtype=float)
            row = {"round": r, "loss": float(np.average(group["loss"], weights=w))}
            if group["accuracy"].notna().any():
                row["accuracy"] = float(np.average(group["accuracy"].fillna(0), weights=w))
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self):
        """Noisy loss (and accuracy) of the global model per round, and the privacy each node spent."""
        import matplotlib.pyplot as plt

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        per_round = self.rounds()
        ax1.plot(per_round["round"] - 1, per_round["loss"], marker="o", label="loss (DP-noised)")
        if "accuracy" in per_round:
            ax1.plot(per_round["round"] - 1, per_round["accuracy"], marker="s", label="accuracy (DP-noised)")
        ax1.set_xlabel("global model after round")
        ax1.set_title(f"{self.spec.model}: metrics on the nodes' data")
        ax1.legend()
        ax1.grid(alpha=0.3)
        for node, group in self.history.groupby("node"):
            ax2.plot(group["round"], group["epsilon_spent"], marker="o", label=str(node))
        ax2.axhline(self.spec.epsilon, color="grey", linestyle="--", label="planned ε")
        ax2.set_xlabel("round")
        ax2.set_ylabel("ε spent (exact Gaussian DP)")
        ax2.set_title("privacy spent per node")
        ax2.legend()
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        return fig

    def __repr__(self) -> str:
        return (f"<FederatedModel {self.spec.model} y={self.spec.y} x={list(self.spec.x)} "
                f"rounds={len(self.round_seconds)} ε/node={self.spec.epsilon:g}>")


# ---------------------------------------------------------------- the handle's methods


class TrainingMethods:
    """:class:`~workbench.FederatedDataset` methods of federated learning (registered on import)."""

    def train(self, model: str, y: str, x: list[str], **options):
        """Train a built-in model with Flower; only DP-noised updates leave a node (:func:`workbench.channels.fl.kernel.train`)."""
        self._whole("train")
        return train(self, model, y, x, **options)


register(FederatedDataset, TrainingMethods)
