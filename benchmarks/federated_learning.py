"""Federated learning benchmark: accuracy vs a central non-private model, and time per round.

Three real node processes (``workbench node serve``) on the demo hospitals
(20k / 15k / 10k patients), logistic regression ``readmitted ~ age + bmi + visits``.

* accuracy and AUC on a fresh held-out sample of 20k synthetic patients, for
  Workbench federated training at several per-node epsilons (delta 1e-6,
  5 rounds), against scikit-learn's logistic regression trained centrally,
  without privacy, on the pooled rows of the three hospitals (same features,
  same public-bounds scaling);
* seconds per round (rounds 2.. so start-up is excluded) for Workbench on
  Flower's simulation runtime (plain and SecAgg+) and for *bare Flower*: the
  same runtime and backend, a NumPyClient doing the same local training
  in-process on the same rows, no DP, no gate, no HTTP;
* ``--deployment``: also one Workbench round on Flower's deployment engine
  (SuperLink + a SuperNode per node on loopback).

Run: ``python benchmarks/federated_learning.py`` (a few minutes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import httpx
import numpy as np
import tomli_w

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
X = ["age", "bmi", "visits"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(root: Path, superlink_port: int | None = None):
    from workbench.demo.nodes import write_config
    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    nodes = []
    for hospital in HOSPITALS:
        path = write_config(root / hospital, hospital, port=_free_port())
        raw = tomllib.loads(path.read_text())
        raw["datasets"]["patients"]["budget"] = {"epsilon": 100.0, "delta": 1e-3}
        if superlink_port:
            raw["fl"] = {"superlink": f"127.0.0.1:{superlink_port}"}
        path.write_text(tomli_w.dumps(raw))
        service = NodeService(NodeConfig.load(path), start_workers=False)
        token = admin.add_user(service.store, service.authority, "bench", "analyst", actor="bench")
        admin.add_grant(service.store, "bench", "patients", "benchmark", epsilon=100.0, delta=1e-3, actor="bench")
        service.close()
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(path)],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        nodes.append((proc, f"http://127.0.0.1:{raw['node']['port']}", token, path))
    for _, url, _, _ in nodes:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
    return nodes


def central_baseline(data_paths, fmap, test):
    import polars as pl
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    pooled = pl.concat([pl.read_parquet(p) for p in data_paths]).to_pandas()
    Xtr = fmap.transform({c: pooled[c].to_numpy() for c in X})
    ytr = fmap.target(pooled["readmitted"].tolist())
    Xte = fmap.transform({c: test[c].to_numpy() for c in X})
    yte = fmap.target(test["readmitted"].tolist())
    model = LogisticRegression(C=1e6, max_iter=1000).fit(Xtr, ytr)
    return model.score(Xte, yte), roc_auc_score(yte, model.decision_function(Xte))


def bare_flower_seconds_per_round(data_paths, fmap, rounds: int) -> float:
    """Flower's simulation runtime, same thread backend, a plain NumPyClient doing the same local steps."""
    import polars as pl
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from workbench.fl.simulation import _thread_backend, flower_env
    from workbench.fl.trainers import TRAINERS

    trainer = TRAINERS["logistic_regression"]
    paths = [str(p) for p in data_paths]
    stamps: list[float] = []
    cache: dict[str, tuple] = {}

    def load(path: str) -> tuple:
        # Read and scale once per client, then reuse: a node's worker caches its rows the same way.
        if path not in cache:
            frame = pl.read_parquet(path).select([*X, "readmitted"]).to_pandas()
            cache[path] = (fmap.transform({c: frame[c].to_numpy() for c in X}), fmap.target(frame["readmitted"].tolist()))
        return cache[path]

    class Client(NumPyClient):
        def __init__(self, path):
            self.path = path

        def fit(self, parameters, config):
            Xp, y = load(self.path)
            w = [np.asarray(p, dtype=float) for p in parameters]
            v = np.zeros(Xp.shape[1] + 1)
            for _ in range(10):
                g = trainer.per_example_grads(w, Xp, y).sum(axis=0) / len(y)
                v = 0.9 * v + g
                w = [w[0] - 2.0 * v[:-1], w[1] - 2.0 * v[-1:]]
            return w, len(y), {}

    class Strategy(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.perf_counter())
            return out

    server = ServerApp()

    @server.main()
    def _main(grid, context):
        strategy = Strategy(fraction_evaluate=0.0, min_fit_clients=3, min_available_clients=3,
                            initial_parameters=ndarrays_to_parameters([np.zeros(3), np.zeros(1)]))
        DefaultWorkflow()(grid, LegacyContext(context=context, config=ServerConfig(num_rounds=rounds),
                                              strategy=strategy))

    client = ClientApp(client_fn=lambda context: Client(paths[int(context.node_config["partition-id"])]).to_client())
    with flower_env(), _thread_backend():
        run_simulation(server_app=server, client_app=client, num_supernodes=3,
                       backend_config={"init_args": {"num_cpus": 3}})
    gaps = np.diff(stamps)
    return float(np.mean(gaps)) if len(gaps) else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilons", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deployment", action="store_true")
    args = parser.parse_args()

    import logging

    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="wbflbench"))
    os.environ.setdefault("WORKBENCH_HOME", str(root / "home"))
    import workbench as wb
    from sklearn.metrics import roc_auc_score

    from workbench.demo.data import patients, write_demo_data
    from workbench.demo.nodes import PATIENT_COLUMNS
    from workbench.fl.deployment import start_superlink, stop_group
    from workbench.fl.trainers import feature_map
    from workbench.protocol import ColumnInfo, DatasetInfo

    info = DatasetInfo(name="patients", tier="private", max_rows=100_000,
                       columns=[ColumnInfo(name=n, **c) for n, c in PATIENT_COLUMNS.items()])
    fmap = feature_map(info, "classification", X, "readmitted")
    data = write_demo_data(root / "data")
    test = patients(20_000, 2024).to_pandas()
    yte = fmap.target(test["readmitted"].tolist())

    superlink_port = _free_port() if args.deployment else None
    superlink = start_superlink(superlink_port, root / "superlink") if args.deployment else None
    nodes = start_nodes(root, superlink_port)
    rows = []
    try:
        fed = wb.federation([wb.connect(url, token=token) for _, url, token, _ in nodes])
        ds = fed.dataset("patients")
        acc, auc = central_baseline([data[h] for h in HOSPITALS], fmap, test)
        rows.append(("central, non-private (sklearn)", "-", acc, auc, float("nan")))
        runs = [(float(e), False) for e in args.epsilons.split(",")] + [(max(float(e) for e in
                                                                           args.epsilons.split(",")), True)]
        for eps, secagg in runs:
            job = ds.train(model="logistic_regression", y="readmitted", x=X, rounds=args.rounds, epsilon=eps,
                           delta=1e-6, secure_aggregation=secagg)
            model = job.result(timeout=1800)
            p = model.predict_proba(test)
            label = f"Workbench simulation{' + SecAgg+' if secagg else ''}"
            rows.append((label, f"{eps:g}", float(np.mean((p >= 0.5) == (yte >= 0.5))), roc_auc_score(yte, p),
                         float(np.mean(model.round_seconds[1:]))))
        bare = bare_flower_seconds_per_round([data[h] for h in HOSPITALS], fmap, args.rounds)
        rows.append(("bare Flower simulation (no DP, no gate, no HTTP)", "-", float("nan"), float("nan"), bare))
        if args.deployment:
            job = ds.train(model="logistic_regression", y="readmitted", x=X, rounds=1, epsilon=1.0, delta=1e-6,
                           engine="deployment", superlink=f"127.0.0.1:{superlink_port}")
            model = job.result(timeout=1800)
            p = model.predict_proba(test)
            rows.append(("Workbench deployment (1 round, incl. start)", "1", float(np.mean((p >= 0.5) == (yte >= 0.5))),
                         roc_auc_score(yte, p), float(model.round_seconds[0])))
    finally:
        for proc, *_ in nodes:
            stop_group(proc, timeout=20)
        if superlink is not None:
            stop_group(superlink)

    print(f"\nlogistic regression readmitted ~ {' + '.join(X)}; 3 nodes (20k/15k/10k rows); test: 20k fresh rows; "
          f"{args.rounds} rounds; delta=1e-6 per node")
    print(f"{'model':52s} {'eps/node':>8s} {'accuracy':>9s} {'AUC':>7s} {'s/round':>8s}")
    for name, eps, acc, auc, sec in rows:
        print(f"{name:52s} {eps:>8s} {acc:9.4f} {auc:7.4f} {sec:8.2f}")
    wb_secs = [r[4] for r in rows if r[0] == "Workbench simulation"]
    if wb_secs and not np.isnan(bare):
        print(f"\nper-round time, Workbench / bare Flower (same runtime and backend): {np.mean(wb_secs) / bare:.2f}x")


if __name__ == "__main__":
    main()
