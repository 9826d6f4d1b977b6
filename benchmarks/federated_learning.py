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
  (SuperLink + a SuperNode per node on loopback);
* ``--mlp``: also the torch MLP (16 hidden units) at the largest epsilon;
* ``--profile``: also where a round's time goes, per stage (median ms per
  message, from the Workbench run at the largest epsilon and from bare Flower).
  The node processes (and their workers) then load timing hooks from a
  ``sitecustomize.py`` written to a temporary folder (``PYTHONPATH``): they
  wrap the node's message handler, gate, transactions, worker pool and
  ``local_round`` and append one JSON line per call (~0.1 ms each).

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


STAGE_HOOKS = r"""
import os
if os.environ.get("WB_FL_STAGE_TRACE"):
    import contextlib, functools, json, threading, time
    _path, _lock = os.environ["WB_FL_STAGE_TRACE"], threading.Lock()

    def _rec(stage, dt):
        with _lock, open(_path, "a") as f:
            f.write(json.dumps({"pid": os.getpid(), "stage": stage, "dt": dt, "end": time.time()}) + "\n")

    def _timed(stage, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _rec(stage, time.perf_counter() - t0)
        return wrapper

    import workbench.channels.fl.worker as local
    local.local_round = _timed("worker.local_round", local.local_round)
    local._load = _timed("worker.load", local._load)
    import workbench.node.worker as worker
    worker.WorkerPool.run = _timed("node.pool_run", worker.WorkerPool.run)
    import workbench.channels.fl.jobs as jobs
    jobs.JobRegistry.handle = _timed("node.handle", jobs.JobRegistry.handle)
    import workbench.node.gate as gate
    gate.ReleaseGate.release = _timed("node.gate", gate.ReleaseGate.release)
    import workbench.node.store as store
    _tx = store.Store.transaction

    @contextlib.contextmanager
    def _transaction(self, mode="durable"):
        t0 = time.perf_counter()
        with _tx(self, mode) as session:
            yield session
        _rec("node.tx_" + mode, time.perf_counter() - t0)
    store.Store.transaction = _transaction
    import workbench.server as app
    _create = app.create_app

    def _create_app(service):
        a = _create(service)

        @a.middleware("http")
        async def _timing(request, call_next):
            t0 = time.perf_counter()
            response = await call_next(request)
            if request.url.path.endswith("/messages"):
                _rec("node.http_app", time.perf_counter() - t0)
            return response
        return a
    app.create_app = _create_app
"""


def start_nodes(root: Path, superlink_port: int | None = None, trace: Path | None = None):
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
        env = dict(os.environ)
        if trace is not None:
            (root / "hooks").mkdir(exist_ok=True)
            (root / "hooks" / "sitecustomize.py").write_text(STAGE_HOOKS)
            env.update(PYTHONPATH=os.pathsep.join(p for p in (str(root / "hooks"), env.get("PYTHONPATH")) if p),
                       WB_FL_STAGE_TRACE=str(trace))
        proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(path)],
                                start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
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


def bare_flower(data_paths, fmap, rounds: int) -> dict:
    """Flower's simulation runtime, same thread backend, a plain NumPyClient doing the same local steps.

    Returns the mean seconds per round (rounds 2.., like Workbench's), the
    round end times and each fit's (start, end) (``time.monotonic``).
    """
    import polars as pl
    from flwr.client import NumPyClient
    from flwr.clientapp import ClientApp
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from workbench.channels.fl.simulation import _thread_backend, flower_env
    from workbench.channels.fl.trainers import TRAINERS

    trainer = TRAINERS["logistic_regression"]
    paths = [str(p) for p in data_paths]
    stamps: list[float] = []
    fits: list[tuple[float, float]] = []
    cache: dict[str, tuple] = {}

    def load(path: str) -> tuple:
        # Read and scale once per client, then reuse: a node's worker caches its rows the same way.
        if path not in cache:
            frame = pl.read_parquet(path).select([*X, "readmitted"]).to_pandas()
            cache[path] = (fmap.transform({c: frame[c].to_numpy() for c in X}),
                           fmap.target(frame["readmitted"].tolist()))
        return cache[path]

    class Client(NumPyClient):
        def __init__(self, path):
            self.path = path

        def fit(self, parameters, config):
            start = time.monotonic()
            try:
                return self._fit(parameters)
            finally:
                fits.append((start, time.monotonic()))

        def _fit(self, parameters):
            Xp, y = load(self.path)
            w = [np.asarray(p, dtype=float) for p in parameters]
            v = np.zeros(Xp.shape[1] + 1)
            for _ in range(10):  # full-batch gradient of the mean log-loss, as a Flower user would write it
                r = trainer.predict_raw(w, Xp) - y
                g = np.concatenate([Xp.T @ r, [r.sum()]]) / len(y)
                v = 0.9 * v + g
                w = [w[0] - 2.0 * v[:-1], w[1] - 2.0 * v[-1:]]
            return w, len(y), {}

    class Strategy(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            out = super().aggregate_fit(server_round, results, failures)
            stamps.append(time.monotonic())
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
    return {"seconds": float(np.mean(gaps)) if len(gaps) else float("nan"), "stamps": stamps, "fits": fits}


def _per_round(stamps: list[float], spans: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """For rounds 2..: (round seconds, slowest message in it), messages assigned to rounds by end time."""
    out = []
    for before, end in zip(stamps, stamps[1:]):
        inside = [b - a for a, b in spans if before < b <= end]
        if inside:
            out.append((end - before, max(inside)))
    return out


class ForwardTimer:
    """Times each forward of a Flower message to a node, in the analyst's process (simulation engine)."""

    def __init__(self):
        self.spans: list[tuple[float, float]] = []
        self.serialize: list[float] = []

    def __enter__(self):
        import workbench.channels.fl.forward as forward_module
        from flwr.common.serde import message_to_proto

        self._module, self._original = forward_module, forward_module.forward

        def timed(link, message):
            t0 = time.monotonic()
            message_to_proto(message).SerializeToString()  # measured separately (done again inside forward)
            t1 = time.monotonic()
            reply = self._original(link, message)
            self.serialize.append(t1 - t0)
            self.spans.append((t1, time.monotonic()))
            return reply

        forward_module.forward = timed
        return self

    def __exit__(self, *exc):
        self._module.forward = self._original


def stage_table(job_stamps: list[float], forward: ForwardTimer, trace: Path, bare: dict) -> list[tuple]:
    """Median milliseconds per message and per round, by stage, for rounds 2.. of one Workbench job and bare Flower."""
    import json

    wall = time.time() - time.monotonic()  # node records carry wall-clock end times
    first = job_stamps[0] + wall
    node: dict[str, list[float]] = {}
    for line in trace.read_text().splitlines():
        record = json.loads(line)
        if record["end"] > first:
            node.setdefault(record["stage"], []).append(record["dt"] * 1000)
    med = {k: float(np.median(v)) for k, v in node.items()}
    fwd = [(b - a) * 1000 for a, b in forward.spans if a + wall > first]
    wb_rounds = _per_round(job_stamps, forward.spans)
    bare_rounds = _per_round(bare["stamps"], bare["fits"])
    bare_fit = [(b - a) * 1000 for a, b in bare["fits"]]
    g = med.get
    rows = [
        ("round (rounds 2..)", np.mean([r for r, _ in wb_rounds]) * 1000, np.mean([r for r, _ in bare_rounds]) * 1000),
        ("  Flower runtime: polling, queues, FedAvg (round - slowest message)",
         np.mean([r - m for r, m in wb_rounds]) * 1000, np.mean([r - m for r, m in bare_rounds]) * 1000),
        ("  slowest message of the round", np.mean([m for _, m in wb_rounds]) * 1000,
         np.mean([m for _, m in bare_rounds]) * 1000),
        ("one message (median)", float(np.median(fwd)), float(np.median(bare_fit))),
        ("  analyst: message -> protobuf (+ base64)", float(np.median(forward.serialize)) * 1000, 0.0),
        ("  HTTP keep-alive + uvicorn (forward - node app)", float(np.median(fwd)) - g("node.http_app", 0), 0.0),
        ("  node app: body, auth, routing (app - handler)", g("node.http_app", 0) - g("node.handle", 0), 0.0),
        ("  node handler: protobuf, Flower ClientApp, checks (handler - gate)", g("node.handle", 0) - g("node.gate", 0),
         0.0),
        ("  gate: replay check, reserve (durable), commit + audit", g("node.gate", 0) - g("node.pool_run", 0), 0.0),
        ("    of which the durable transaction (reservation)", g("node.tx_durable", 0), 0.0),
        ("    of which light transactions (x2)", 2 * g("node.tx_light", 0), 0.0),
        ("  worker hand-off: JSON + pipes (pool - local_round)", g("node.pool_run", 0) - g("worker.local_round", 0),
         0.0),
        ("  data load (cached after round 1)", g("worker.load", 0), 0.0),
        ("  local training: 10 noisy clipped steps + metrics / 10 plain steps",
         g("worker.local_round", 0) - g("worker.load", 0), float(np.median(bare_fit))),
    ]
    messages = max(len(node.get("node.handle", [])), 1)
    loads = node.get("worker.load", [])
    per = {mode: len(node.get(f"node.tx_{mode}", [])) / messages for mode in ("durable", "light", "read")}
    note = (f"per message: {per['durable']:.1f} durable, {per['light']:.1f} light, {per['read']:.1f} read "
            f"transactions; worker data cache hits: {sum(v < 5 for v in loads)}/{len(loads)}")
    return rows, note


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epsilons", default="1,2,4")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--deployment", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print where a round's time goes, per stage")
    parser.add_argument("--mlp", action="store_true",
                        help="also train the torch MLP (hidden=16) at the largest epsilon")
    args = parser.parse_args()

    import logging

    logging.getLogger("flwr").setLevel(logging.CRITICAL)
    root = Path(tempfile.mkdtemp(prefix="wbflbench"))
    os.environ.setdefault("WORKBENCH_HOME", str(root / "home"))
    import workbench as wb
    from sklearn.metrics import roc_auc_score

    from workbench.demo.data import patients, write_demo_data
    from workbench.demo.nodes import PATIENT_COLUMNS
    from workbench.channels.fl.deployment import start_superlink, stop_group
    from workbench.channels.fl.trainers import feature_map
    from workbench.protocol import ColumnInfo, DatasetInfo

    info = DatasetInfo(name="patients", tier="private", max_rows=100_000,
                       columns=[ColumnInfo(name=n, **c) for n, c in PATIENT_COLUMNS.items()])
    fmap = feature_map(info, "classification", X, "readmitted")
    data = write_demo_data(root / "data")
    paths = [data[h] for h in HOSPITALS]
    test = patients(20_000, 2024).to_pandas()
    yte = fmap.target(test["readmitted"].tolist())

    superlink_port = _free_port() if args.deployment else None
    superlink = start_superlink(superlink_port, root / "superlink") if args.deployment else None
    trace = root / "stages.jsonl" if args.profile else None
    nodes = start_nodes(root, superlink_port, trace)
    rows, pairs, stages = [], [], None
    epsilons = [float(e) for e in args.epsilons.split(",")]
    try:
        fed = wb.federation([wb.connect(url, token=token) for _, url, token, _ in nodes])
        ds = fed.dataset("patients")
        acc, auc = central_baseline(paths, fmap, test)
        rows.append(("central, non-private (sklearn)", "-", acc, auc, float("nan")))
        for eps, secagg in [(e, False) for e in epsilons] + [(max(epsilons), True)]:
            profiled = trace is not None and not secagg and eps == max(epsilons)
            if profiled:
                trace.write_text("")
            with ForwardTimer() as forward:
                job = ds.train(model="logistic_regression", y="readmitted", x=X, rounds=args.rounds, epsilon=eps,
                               delta=1e-6, secure_aggregation=secagg)
                model = job.result(timeout=1800)
            p = model.predict_proba(test)
            label = f"Workbench simulation{' + SecAgg+' if secagg else ''}"
            seconds = float(np.mean(model.round_seconds[1:]))
            rows.append((label, f"{eps:g}", float(np.mean((p >= 0.5) == (yte >= 0.5))), roc_auc_score(yte, p),
                         seconds))
            if not secagg:  # bare Flower right after each plain job: both see the same machine load
                bare = bare_flower(paths, fmap, args.rounds)
                pairs.append((seconds, bare["seconds"]))
                rows.append(("bare Flower simulation (no DP, no gate, no HTTP)", "-", float("nan"), float("nan"),
                             bare["seconds"]))
                if profiled:
                    stages = stage_table(job.round_times, forward, trace, bare)
        if args.mlp:
            job = ds.train(model="mlp", y="readmitted", x=X, rounds=args.rounds, epsilon=max(epsilons), delta=1e-6,
                           hyperparameters={"hidden": 16})
            model = job.result(timeout=1800)
            p = model.predict_proba(test)
            rows.append(("Workbench simulation, torch MLP (16 tanh units)", f"{max(epsilons):g}",
                         float(np.mean((p >= 0.5) == (yte >= 0.5))), roc_auc_score(yte, p),
                         float(np.mean(model.round_seconds[1:]))))
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
        print(f"{name:52s} {eps:>8s} {acc:9.4f} {auc:7.4f} {sec:8.3f}")
    if pairs:
        wb_mean, bare_mean = np.mean([a for a, _ in pairs]), np.mean([b for _, b in pairs])
        print(f"\nper-round time, Workbench / bare Flower (same runtime and backend, each pair run back to back): "
              f"{wb_mean / bare_mean:.2f}x ({wb_mean * 1000:.0f} ms / {bare_mean * 1000:.0f} ms)")
    if stages:
        table, note = stages
        print(f"\nwhere the time goes (eps={max(epsilons):g}, rounds 2..{args.rounds}; ms)")
        print(f"{'stage':72s} {'Workbench':>9s} {'bare':>7s}")
        for name, wb_ms, bare_ms in table:
            print(f"{name:72s} {wb_ms:9.1f} {bare_ms:7.1f}")
        print(note)


if __name__ == "__main__":
    main()
