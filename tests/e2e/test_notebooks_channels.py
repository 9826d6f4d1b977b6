"""The channel notebooks (03 synthetic data, 04 federated queries and HE, 05 federated learning), executed by
papermill against real node processes (and, for 04, a real aggregator process), with assertions on the values
a reader would check (the cell tagged ``summary``) and on the figures' captions.

One module-scoped federation of three demo hospitals (plus the aggregator they trust) serves 04 and 05: the
notebooks spend different amounts of the same per-node grants (ε 10 each), as they would in a workshop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import polars as pl
import pytest

from tests.conftest import start_aggregator
from tests.intervals import near_interval
from tests.e2e.test_notebooks import (errors_in, figures_with_captions, jupyter_dirs, launch_many,  # noqa: F401
                                  run_notebook, summary_of)

HOSPITALS = ["hospital_a", "hospital_b", "hospital_c"]




def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def _patients(node) -> pl.DataFrame:
    """The node's own data file (the test may look; the notebook may not)."""
    raw = tomllib.loads(node.config_path.read_text())
    path = (node.config_path.parent / raw["datasets"]["patients"]["path"]).resolve()
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


@pytest.fixture(scope="module")
def federation(tmp_path_factory, jupyter_dirs):  # noqa: F811
    """Three hospital nodes and an aggregator every node trusts, as ``workbench demo`` sets them up."""
    from workbench.aggregator.app import add_node

    root = tmp_path_factory.mktemp("channels")
    state = root / "aggregator"
    tokens = {h: add_node(state, h.replace("_", "-")) for h in HOSPITALS}
    with ThreadPoolExecutor(1) as pool:
        agg = pool.submit(start_aggregator, state)
        nodes = launch_many(root, HOSPITALS)  # also saves the analyst's tokens in the client config
        proc, agg_url = agg.result()
    for hospital, node in zip(HOSPITALS, nodes):
        r = httpx.put(f"{node.url}/v1/he/aggregators/demo", json={"url": agg_url, "token": tokens[hospital]},
                      headers={"Authorization": f"Bearer {node.owner_token}"}, timeout=30)
        assert r.status_code == 200, r.text
    yield {"nodes": nodes, "urls": [n.url for n in nodes], "aggregator": agg_url,
           "pooled": pl.concat([_patients(n) for n in nodes], how="vertical_relaxed")}
    for node in nodes:
        node.stop()
    _stop(proc)


# ---------------------------------------------------------------- 04: federated queries, HE and SMPC, regression


def test_04_federated_queries_and_he(federation, tmp_path):
    nb = run_notebook("04_federated_queries_and_he.ipynb", tmp_path, node_urls=",".join(federation["urls"]))
    assert not errors_in(nb)
    s = summary_of(nb)
    pooled = federation["pooled"]
    assert s["nodes"] == ["hospital-a", "hospital-b", "hospital-c"]

    # the federated mean: near the pooled truth, inside its interval, narrower than any hospital's own
    est, lo, hi = s["pooled_mean"]
    truth = pooled["age"].mean()
    assert near_interval(lo, hi, truth), (est, lo, hi, truth)
    assert set(s["own_means"]) == set(s["nodes"])
    for name, (e, l, h) in s["own_means"].items():
        assert l < e < h
    smallest = s["own_means"]["hospital-c"]  # 10,000 patients: the widest interval of the three
    assert smallest[2] - smallest[1] > hi - lo, "the federation is more precise than the smallest hospital"

    # secure sums (HE, then SMPC): each total near the pooled truth (tests/intervals.py: one rule for a single draw)
    truths = {"sum(cost)": pooled["cost"].sum(), "sum(visits)": pooled["visits"].sum(), "count": pooled.height}
    for protocol in ("he_sum", "smpc_sum"):
        assert set(s[protocol]) == set(truths)
        for stat, (e, l, h) in s[protocol].items():
            assert l < e < h and near_interval(l, h, truths[stat]), (protocol, stat, e, l, h, truths[stat])
    assert s["parties"] == ["hospital-a", "hospital-b", "hospital-c"] and s["smpc_protocol"] == "smpc"

    # regression: cost rises with age and bmi in the demo data; standard errors positive
    reg = s["regression"]
    assert list(reg) == ["intercept", "age", "bmi"]
    assert reg["age"][0] > 0 and reg["bmi"][0] > 0
    for coef, std_err, lower, upper in reg.values():
        assert std_err > 0 and lower < coef < upper

    # the query language over the federation: a filtered std and quantile per sex, pooled from every node
    old = pooled.filter(pl.col("age") >= 65)
    for sex in ("F", "M"):
        part = old.filter(pl.col("sex") == sex)
        ages = sorted(part["age"].to_list())
        truths = {"sd": part["cost"].std(ddof=0), "p90": ages[int(np.ceil(0.9 * len(ages))) - 1]}
        for stat, true in truths.items():
            e, lo, hi = s["spread"][f"{sex}:{stat}"]
            assert near_interval(lo, hi, true), (sex, stat, e, lo, hi, true)
    e, lo, hi = s["corr"]["age:cost"]
    assert near_interval(lo, hi, np.corrcoef(pooled["age"], pooled["cost"])[0, 1]) and lo < e < hi, (e, lo, hi)
    assert s["regression_dp_replayed"] and list(s["regression_dp"]) == ["intercept", "age", "bmi"]
    assert s["regression_dp"]["age"][0] > 0 and all(se > 0 for _e, se, _l, _h in s["regression_dp"].values())

    # every node charged 0.2 + 0.2 + 0.2 + 0.5 + 0.5 + 0.5 once (per-hospital means and the DP regression replayed)
    assert s["epsilon_spent_here"] == {n: pytest.approx(2.1) for n in s["nodes"]}
    captions = figures_with_captions(nb)
    assert len(captions) == 3 and "federation" in captions[0] and "regression" in captions[1]
    assert "per-node" in captions[2] or "own DP moments" in captions[2]
    text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "**Threat model.**" in text and "conservative" in text


# ---------------------------------------------------------------- 05: federated learning (Flower simulation engine)


def test_05_federated_learning(federation, tmp_path):
    nb = run_notebook("05_federated_learning.ipynb", tmp_path, node_urls=",".join(federation["urls"]), rounds=3)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["rounds"] == [1, 2, 3]
    # round 1 reports the all-zero starting model; training lowers the (noisy) loss and raises the accuracy
    assert s["loss"][-1] < s["loss"][0] and s["accuracy"][-1] > s["accuracy"][0]
    assert s["accuracy"][-1] > 0.7
    # each node: three rounds, exactly the job's epsilon, in its own account and in the grant's ledger
    assert s["privacy_nodes"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert s["privacy_rounds"] == [3, 3, 3]
    assert s["privacy_epsilon_spent"] == pytest.approx([2.0] * 3, abs=1e-6)
    assert s["epsilon_spent_here"] == {n: pytest.approx(2.0, abs=1e-6) for n in s["privacy_nodes"]}
    # the model on the analyst's own rows: it ranks risk the right way round and is no worse than "always no"
    assert s["features"][-1] == "intercept" and len(s["features"]) == 5
    assert s["mean_risk_readmitted"] > s["mean_risk_not_readmitted"] + 0.02
    assert s["own_accuracy"] >= s["own_baseline"] - 0.02
    assert set(s["predictions"]) <= {True, False}
    captions = figures_with_captions(nb)
    assert len(captions) == 2 and "privacy" in captions[0] and "your own" in captions[1]
    # progress was shown: a tqdm bar (a widget in a notebook: its text form is the bar as first drawn)
    bars = [o for c in nb.cells for o in c.get("outputs", [])
            if "training logistic_regression" in str(o.get("data", {}).get("text/plain", "")) + str(o.get("text", ""))]
    assert bars, "job.progress() showed no progress bar"


@pytest.mark.slow
def test_05_runs_with_nothing_running(jupyter_dirs, tmp_path, monkeypatch):  # noqa: F811
    """A fresh papermill run with no demo and no parameters (issue 15, item 11): ``wb.demo_federation()``
    starts three loopback nodes and an aggregator for the kernel, with fresh grants."""
    monkeypatch.delenv("WORKBENCH_DEMO_NODES", raising=False)
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "wbhome"))
    nb = run_notebook("05_federated_learning.ipynb", tmp_path, rounds=2)
    assert not errors_in(nb)
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "Starting three demo hospital nodes and an aggregator on loopback for this kernel" in printed
    assert "DEBUG" not in printed and "Warning" not in printed, printed[-2000:]
    s = summary_of(nb)
    assert s["privacy_nodes"] == ["hospital-a", "hospital-b", "hospital-c"] and s["rounds"] == [1, 2]
    assert s["privacy_epsilon_spent"] == pytest.approx([2.0] * 3, abs=1e-6)  # a fresh federation's grants
    # the nodes stop with the kernel: tests/e2e/test_first_hour.py::test_demo_federation_runs_anywhere_and_stops_at_exit


# ---------------------------------------------------------------- 03: synthetic data (one real node, a published mock)


@pytest.mark.slow
def test_03_synthetic_data(jupyter_dirs, tmp_path):  # noqa: F811
    (node,) = launch_many(tmp_path / "node", ["hospital_c"])  # the smallest hospital: the fastest fit
    try:
        published = subprocess.run(
            [sys.executable, "-m", "workbench.cli", "node", "mock", "publish", "patients", "--epsilon", "0.5",
             "--rows", "300", "--method", "independent", "--no-progress", "--config", str(node.config_path)],
            capture_output=True, text=True, timeout=300)
        assert published.returncode == 0, published.stderr[-2000:]
        nb = run_notebook("03_synthetic_data.ipynb", tmp_path, node_url=node.url)
        real = _patients(node)
    finally:
        node.stop()
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["columns"] == ["age", "sex", "smoker", "diagnosis", "readmitted"] and s["rows"] == 1000
    assert s["dp"] is True and s["method"] == "mst" and s["charged"] == 1.0
    assert s["again_replayed"] is True and s["again_identical"] is True
    assert s["epsilon_spent_here"] == pytest.approx(1.0)  # the replay and the mock were free
    # the rows stay in the public domain, and resemble the noisy marginals
    assert s["categories"]["diagnosis"] == sorted(set(real["diagnosis"].unique()))
    assert set(s["categories"]["sex"]) <= {"F", "M"}
    assert 0 <= s["age_range"][0] and s["age_range"][1] <= 100
    assert 0 <= s["tvd_1way"] < 0.1 and 0 <= s["tvd_2way"] < 0.15
    assert s["mock_rows"] == 300 and s["mock_epsilon"] == 0.5
    captions = figures_with_captions(nb)
    assert len(captions) == 1 and "noisy marginal" in captions[0]
