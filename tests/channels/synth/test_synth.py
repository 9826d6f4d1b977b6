"""Synthetic data through a real node: DP synthesis, replay, preview, domain, cancel, SDV, mocks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib

import numpy as np
import polars as pl
import pytest
import tomli_w

import workbench as wb
from workbench.errors import BudgetExceeded, InvalidQuery, NotAuthorized, NotFound

from tests.conftest import make_config, provision, start_node

pytestmark = pytest.mark.slow

CLINIC_COLUMNS = {
    "pid": {"type": "id"},
    "age": {"type": "int", "bounds": [0, 100]},
    "region": {"type": "category", "categories": ["north", "south", "east"]},
    "smoker": {"type": "bool"},
    "cost": {"type": "float", "bounds": [0.0, 1000.0]},
}


def clinic_frame(rows: int = 3000, seed: int = 5) -> pl.DataFrame:
    """Real rows that break the public domain on purpose: a region the metadata does not list, ages and costs
    outside the public bounds."""
    rng = np.random.default_rng(seed)
    region = rng.choice(["north", "south", "east"], rows, p=[0.5, 0.3, 0.2]).astype(object)
    region[:40] = "atlantis"  # a rare real category, absent from the metadata
    age = rng.integers(20, 90, rows)
    age[40:60] = 150  # outside the public bounds
    cost = rng.gamma(2.0, 100.0, rows)
    cost[60:80] = 99_999.0
    smoker = rng.random(rows) < np.where(age > 60, 0.1, 0.4)
    return pl.DataFrame({"pid": [f"p{i}" for i in range(rows)], "age": age, "region": list(region),
                         "smoker": smoker, "cost": cost})


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthnode")
    config_path = make_config(root)
    raw = tomllib.loads(config_path.read_text())
    clinic = root / "data" / "clinic.parquet"
    clinic_frame().write_parquet(clinic)
    base = {"path": str(clinic), "tier": "private", "max_rows": 10_000, "columns": CLINIC_COLUMNS,
            "privacy_unit": {"id_column": "pid", "max_contributions": 1}, "budget": {"epsilon": 40.0, "delta": 1e-4},
            "synth_max_rows": 5_000, "synth_timeout_s": 300.0}
    raw["datasets"]["clinic"] = {**base, "allow_sdv_on_real": True}
    raw["datasets"]["clinic_strict"] = dict(base)
    config_path.write_text(tomli_w.dumps(raw))
    accounts = provision(config_path)
    proc = start_node(config_path)
    url = f"http://127.0.0.1:{raw['node']['port']}"

    class Handle:
        pass

    h = Handle()
    h.url, h.config_path, h.analyst, h.owner, h.proc = url, config_path, accounts.analyst_token, \
        accounts.owner_token, proc
    yield h
    import signal

    proc = h.proc  # the restart test replaces it
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except Exception:  # noqa: BLE001
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def analyst(node):
    return wb.connect(node.url, token=node.analyst)


def owner(node):
    return wb.connect(node.url, token=node.owner)


def spent(ds) -> float:
    return ds.budget()["epsilon_spent"]


def test_preview_spends_nothing_and_prices_the_noise(node):
    ds = analyst(node).dataset("clinic")
    before = spent(ds)
    p = ds.synthesize_preview(rows=500, epsilon=1.0, method="independent")
    assert p.epsilon == 1.0 and not p.would_replay
    assert p.body.columns == ["age", "region", "smoker", "cost"] and p.body.dropped == {"pid": "identifier"}
    m = p.measurements()
    # 80% of epsilon on the 4 columns' histograms, 20% on fine one-way marginals of the 2 numeric columns
    assert len(m) == 6 and np.allclose(m["epsilon"], [0.2] * 4 + [0.1] * 2)
    assert np.allclose(m["noise_std"], [5 * np.sqrt(2)] * 4 + [10 * np.sqrt(2)] * 2)  # Laplace 1/eps, sensitivity 1
    assert p.budget_left_after["epsilon"] == pytest.approx(ds.budget()["epsilon"] - 1.0)
    mst = ds.synthesize(rows=500, epsilon=2.0, method="mst", preview=True)
    assert "MST" in mst.body.note
    assert spent(ds) == before


def test_bad_requests_are_refused_with_codes(node):
    ds = analyst(node).dataset("clinic")
    with pytest.raises(InvalidQuery) as exc:
        ds.synthesize_preview(rows=6_000, epsilon=1.0)
    assert exc.value.code == "too_many_rows"
    with pytest.raises(InvalidQuery) as exc:
        ds.synthesize_preview(rows=10, epsilon=1.0, columns=["pid", "age"])
    assert exc.value.code == "invalid_query"
    with pytest.raises(InvalidQuery) as exc:
        ds.synthesize_preview(rows=10, epsilon=1.0, columns=["nope"])
    assert exc.value.code == "unknown_column"
    with pytest.raises(InvalidQuery):
        ds.synthesize_preview(rows=10, epsilon=1.0, method="mst", marginals=[["age", "region"]])


def test_over_budget_is_refused_before_fitting(node):
    own = owner(node)
    token = own.request("POST", "/users", json={"name": "carl", "role": "analyst"})["token"]
    own.request("POST", "/grants", json={"user": "carl", "dataset": "clinic_strict", "purpose": "tiny",
                                         "epsilon": 0.5})
    ds = wb.connect(node.url, token=token).dataset("clinic_strict")
    with pytest.raises(BudgetExceeded) as exc:
        ds.synthesize(rows=100, epsilon=1.0, method="independent", progress=False)
    assert exc.value.code == "budget_exceeded"
    from workbench.channels.synth.kernel import synthesis

    with pytest.raises(BudgetExceeded):  # the request that would start a job is refused: no job, no fit
        synthesis(ds, rows=100, epsilon=1.0, method="independent").start()
    assert spent(ds) == 0.0


def test_dp_synthesis_end_to_end_charged_once_replay_free(node):
    ds = analyst(node).dataset("clinic")
    before = spent(ds)
    syn = ds.synthesize(rows=800, epsilon=2.0, method="mst", progress=False)
    assert spent(ds) == pytest.approx(before + 2.0)
    data = syn.data
    assert list(data.columns) == ["age", "region", "smoker", "cost"] and len(data) == 800
    # the public domain holds, whatever the real rows contain
    assert set(data["region"].dropna().unique()) <= {"north", "south", "east"}
    assert "atlantis" not in set(data["region"].astype(str))
    assert data["age"].dropna().between(0, 100).all()
    assert data["cost"].dropna().between(0.0, 1000.0).all()
    assert "pid" not in data.columns
    # the report: DP inputs only, figures, a plot, what DP covers
    report = syn.report
    assert report.dp and report.method == "mst" and report.epsilon == 2.0
    figures = report.figures()
    assert set(figures["ways"]) == {1, 2} and (figures["tvd"] >= 0).all() and (figures["tvd"] <= 1).all()
    assert report.tvd_1way is not None and report.tvd_1way < 0.2
    assert "Covered by DP" in report.covered and "Not covered by DP" in report.not_covered
    fig = report.plot()
    assert len(fig.axes) == 2
    for m in report.raw["marginals"]:
        assert "atlantis" not in " ".join(m["labels"])
        assert set(m) == {"columns", "cells", "noise_std", "noisy_total", "tvd", "noise_floor", "labels", "noisy",
                          "synthetic"}
    # replay: identical question, identical answer, free
    again = ds.synthesize(rows=800, epsilon=2.0, method="mst", progress=False)
    assert again.replayed and again.release_id == syn.release_id
    assert again.data.equals(syn.data)
    assert spent(ds) == pytest.approx(before + 2.0)
    # the explicit column list is the same question
    explicit = ds.synthesize(rows=800, epsilon=2.0, method="mst", progress=False,
                             columns=["age", "region", "smoker", "cost"])
    assert explicit.replayed and spent(ds) == pytest.approx(before + 2.0)
    # SDV on DP rows: post-processing, metadata from the public schema
    model = syn.fit_sdv("GaussianCopula")
    assert model.dp and model.epsilon == 2.0
    sample = model.sample(50)
    assert len(sample) == 50 and set(sample.columns) == set(data.columns)
    history = analyst(node).history()
    assert (history["channel"] == "synth").sum() >= 2


def test_cancel_keeps_the_charge(node):
    from workbench.channels.synth.kernel import synthesis

    ds = analyst(node).dataset("clinic")
    before = spent(ds)
    job = synthesis(ds, rows=500, epsilon=0.7, method="aim", rounds=6).start()
    deadline = time.monotonic() + 180
    while spent(ds) < before + 0.7 - 1e-9:  # the gate has reserved the charge: the fit is under way
        assert job.refresh().status in ("queued", "running"), job.view
        assert time.monotonic() < deadline, "the fit never started"
        time.sleep(0.2)
    view = job.cancel()
    assert view.status == "cancelled" and view.error.code == "synthesis_cancelled"
    assert spent(ds) == pytest.approx(before + 0.7)  # reserved before the fit: the charge stands
    audit = owner(node).audit()
    assert any(r["action"] == "release_failed" and r["dataset"] == "clinic" for r in audit)


def test_sdv_on_real_refused_unless_allowed(node):
    ds = analyst(node).dataset("clinic_strict")
    with pytest.raises(NotAuthorized) as exc:
        ds.synthesize_sdv("GaussianCopula", rows=100, progress=False)
    assert exc.value.code == "sdv_not_approved"
    refusals = [r for r in owner(node).audit() if r["action"] == "refusal" and r["dataset"] == "clinic_strict"]
    assert any(r["details"].get("code") == "sdv_not_approved" for r in refusals)


def test_sdv_on_real_held_for_review_with_privacy_metrics(node):
    ds = analyst(node).dataset("clinic")
    before = spent(ds)
    before_grant = ds.budget()["grant_id"]
    held = ds.synthesize_sdv("GaussianCopula", rows=300, progress=False)
    assert held.review["status"] == "pending"
    with pytest.raises(NotAuthorized) as exc:
        held.collect()
    assert exc.value.code == "not_approved"
    own = owner(node)
    pending = own.request("GET", f"/reviews/{held.review_id}")
    metrics = pending["summary"]["privacy_metrics"]
    assert 0.0 <= metrics["dcr_baseline_protection"] <= 1.0 and 0.0 <= metrics["new_row_synthesis"] <= 1.0
    own.request("POST", f"/reviews/{held.review_id}/approve", json={"reason": "DCR fine"})
    me = ds.node.request("GET", "/me")["user"]    # a second live grant since: collected under the one asked under
    second = own.request("POST", "/grants", json={"user": me, "dataset": "clinic", "purpose": "second study",
                                                  "epsilon": 1})
    syn = held.collect()
    own.request("DELETE", f"/grants/{second['grant_id']}")
    assert not syn.dp and len(syn.data) == 300
    assert syn.report.privacy_metrics == metrics
    assert "atlantis" not in set(syn.data["region"].astype(str))
    assert syn.data["age"].dropna().between(0, 100).all()
    first = analyst(node).dataset("clinic", grant_id=before_grant)
    assert spent(first) == before  # not DP: no epsilon, the approval is what allows it


def test_mock_published_once_free_and_identical(node):
    env = dict(os.environ)
    a = analyst(node).dataset("clinic_strict")
    before_cap = a.budget()["dataset_epsilon_left"]
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "node", "mock", "publish", "clinic_strict",
                          "--epsilon", "1.5", "--rows", "400", "--method", "independent", "--no-progress",
                          "--config", str(node.config_path)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    own = owner(node)
    after_cap = a.budget()["dataset_epsilon_left"]
    assert after_cap == pytest.approx(before_cap - 1.5)
    # a second analyst, fresh token
    second = own.request("POST", "/users", json={"name": "bea", "role": "analyst"})["token"]
    b = wb.connect(node.url, token=second).dataset("clinic_strict")
    before = spent(a)
    m1, m2 = a.mock(), b.mock()
    assert m1.data.equals(m2.data) and len(m1.data) == 400
    assert m1.dp and m1.epsilon == 1.5
    assert set(m1.data["region"].dropna().unique()) <= {"north", "south", "east"}
    assert spent(a) == before
    assert a.budget()["dataset_epsilon_left"] == pytest.approx(after_cap)
    catalog = a.node.catalog().set_index("name")
    assert bool(catalog.loc["clinic_strict", "mock"]) and not bool(catalog.loc["clinic", "mock"])
    assert a.node.dataset("clinic_strict").schema.has_mock
    listed = {m["dataset"]: m for m in own.request("GET", "/synth/mocks")}
    assert listed["clinic_strict"]["epsilon"] == 1.5 and listed["clinic_strict"]["current"]
    with pytest.raises(NotFound) as exc:
        a.node.dataset("clinic").mock()
    assert exc.value.code == "no_mock"


def test_a_finished_job_survives_a_node_restart(node):
    """Runs last: it restarts the module's node. The job's status and rows come back from the node's store."""
    import signal

    from workbench.channels.synth.kernel import synthesis

    ds = analyst(node).dataset("clinic")
    job = synthesis(ds, rows=300, epsilon=0.5, method="independent").start()
    syn = job.wait(progress=False)
    before = spent(ds)
    os.killpg(node.proc.pid, signal.SIGTERM)
    node.proc.wait(timeout=30)
    node.proc = start_node(node.config_path)

    view = job.refresh()  # same URL and token, a new node process
    assert view.status == "done" and view.release.release_id == syn.release_id
    again = job.result()
    assert again.data.equals(syn.data) and again.report.raw == syn.report.raw
    assert spent(analyst(node).dataset("clinic")) == pytest.approx(before)  # fetching it again costs nothing
    stranger = owner(node).request("POST", "/users", json={"name": "dora", "role": "analyst"})["token"]
    with pytest.raises(NotFound):
        wb.connect(node.url, token=stranger).request("GET", f"/synth/jobs/{job.job_id}")
