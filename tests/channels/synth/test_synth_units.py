"""Unit checks of the synthesis channel's pieces that need no node: public domains, report, metadata, jobs."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from workbench.errors import ComputationFailed, InvalidQuery, NotAuthorized, NotFound, error_class_for
from workbench.protocol import DatasetInfo
from workbench.channels.synth import domain
from workbench.channels.synth.wire import SynthSpec

INFO = DatasetInfo.model_validate({
    "name": "t", "tier": "private", "max_rows": 1000,
    "privacy_unit": {"id_column": "pid", "max_contributions": 1},
    "columns": [
        {"name": "pid", "type": "id"},
        {"name": "age", "type": "int", "bounds": [0, 100]},
        {"name": "visits", "type": "int", "bounds": [0, 5]},
        {"name": "bmi", "type": "float", "bounds": [10.0, 60.0]},
        {"name": "sex", "type": "category", "categories": ["F", "M"]},
        {"name": "smoker", "type": "bool", "categories": [False, True]},
        {"name": "note", "type": "string"},
    ],
})


def test_plan_drops_identifiers_and_columns_without_a_public_domain():
    plan = domain.plan(INFO, SynthSpec(rows=10))
    assert plan.columns == ["age", "visits", "bmi", "sex", "smoker"]
    assert plan.dropped == {"pid": "identifier", "note": "no public bounds or category set"}
    with pytest.raises(InvalidQuery):
        domain.plan(INFO, SynthSpec(rows=10, columns=["pid"]))
    with pytest.raises(InvalidQuery) as exc:
        domain.plan(INFO, SynthSpec(rows=10, columns=["note"]))
    assert exc.value.code == "invalid_query"
    with pytest.raises(InvalidQuery) as exc:
        domain.plan(INFO, SynthSpec(rows=10, method="fixed", columns=["age"], marginals=[["age", "sex"]]))
    assert exc.value.code == "unknown_column"


def test_numeric_bins_come_from_public_bounds_and_decode_inside_them():
    rng = np.random.default_rng(0)
    age = domain.column_domain(INFO.column("age"), 16)
    assert age.cells == 16 and all(0 < c < 100 for c in age.cuts)
    visits = domain.column_domain(INFO.column("visits"), 16)
    assert visits.cells == 6 and visits.labels == ("0", "1", "2", "3", "4", "5")  # one cell per integer
    bmi = domain.column_domain(INFO.column("bmi"), 10)
    for d, (lo, hi) in ((age, (0, 100)), (visits, (0, 5)), (bmi, (10.0, 60.0))):
        for cell in range(d.cells):
            values = d.decode(np.full(200, cell), rng)
            assert all(lo <= v <= hi for v in values)
            assert set(d.encode(values)) == {cell}  # every decoded value falls back into its own cell
    assert visits.decode(np.arange(6), rng) == [0, 1, 2, 3, 4, 5]


def test_categories_are_the_public_ones_and_unknown_values_fall_into_null():
    sex = domain.column_domain(INFO.column("sex"), 16)
    assert sex.keys == ["F", "M"] and sex.labels[-1] == "null"
    assert list(sex.encode(["F", "M", "atlantis", None])) == [0, 1, 2, 2]
    assert sex.decode(np.array([0, 1, 2]), np.random.default_rng(0)) == ["F", "M", None]


def test_report_compares_synthetic_rows_with_noisy_marginals_only():
    from workbench.channels.synth.report import FidelityReport, fidelity_figures

    plan = domain.plan(INFO, SynthSpec(rows=4, columns=["sex", "smoker"]))
    cells = {"sex": np.array([0, 0, 1, 1]), "smoker": np.array([0, 1, 0, 1])}
    measured = [{"columns": ["sex"], "noisy": [2.0, 2.0, -0.3], "noise_std": 1.0},
                {"columns": ["sex", "smoker"], "noisy": [1, 1, 0, 1, 1, 0, 0, 0, 0], "noise_std": 1.0}]
    figures = fidelity_figures(plan, cells, measured)
    assert figures["tvd_1way_mean"] == pytest.approx(0.0) and figures["tvd_2way_mean"] == pytest.approx(0.0)
    assert figures["marginals"][1]["labels"][:2] == ["F | False", "F | True"]
    report = FidelityReport({**figures, "method": "fixed", "epsilon": 1.0}, epsilon_charged=1.0)
    assert "epsilon=1" in report.summary() and len(report.figures()) == 2
    assert len(report.plot().axes) == 2
    assert "Covered by DP" in report._repr_html_()


def test_sdv_metadata_comes_from_the_schema_only():
    from workbench.channels.synth.sdv_support import sdv_metadata_dict

    meta = sdv_metadata_dict(INFO, ["age", "bmi", "sex", "smoker"])
    cols = meta["tables"]["data"]["columns"]
    assert cols == {"age": {"sdtype": "numerical"}, "bmi": {"sdtype": "numerical"}, "sex": {"sdtype": "categorical"},
                    "smoker": {"sdtype": "boolean"}}
    assert "\"M\"" not in json.dumps(cols) and "60" not in json.dumps(cols)


def test_new_error_codes_have_classes():
    assert error_class_for("sdv_not_approved") is NotAuthorized
    assert error_class_for("synthesis_cancelled") is ComputationFailed
    assert error_class_for("no_mock") is NotFound
    assert error_class_for("too_many_rows") is InvalidQuery


def test_calibration_patch_finds_a_scale_opendp_accepts():
    import opendp.prelude as dp

    from workbench.channels.synth import _calibration

    dp.enable_features("contrib")
    _calibration.install()
    import opendp.extras.mbi._table as table

    make = lambda s: dp.m.make_laplace(dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float), scale=s)
    scale = table.binary_search_param(make, 1.0, 0.5)
    assert make(scale).map(1.0) <= 0.5 and scale == pytest.approx(2.0, rel=1e-6)
    assert _calibration._safe_prior(0.05) < 0.05


def test_jobs_cancelled_in_the_queue_never_run(tmp_path):
    from workbench.channels.synth.jobs import SynthJobs

    jobs = SynthJobs(tmp_path, slots=1)
    started, release = threading.Event(), threading.Event()
    ran = []

    def slow(job):
        ran.append(job.job_id)
        started.set()
        release.wait(60)

    first = jobs.submit("ann", "d", "mst", None, slow)
    assert started.wait(60), "the first job never started"
    second = jobs.submit("ann", "d", "mst", None, slow)  # the only slot is held by the first job
    assert jobs.get(second.job_id, "ann").status == "queued"
    cancelled = jobs.cancel(second.job_id, "ann", wait_s=60)
    assert cancelled.status == "cancelled" and cancelled.error.code == "synthesis_cancelled"
    release.set()
    deadline = time.monotonic() + 60
    while jobs.get(first.job_id, "ann").status != "done" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert jobs.get(first.job_id, "ann").status == "done"
    assert ran == [first.job_id]
    with pytest.raises(NotFound):
        jobs.get(first.job_id, "bob")  # only its owner sees a job
    again = jobs.submit("ann", "d", "mst", "req-12345678", lambda job: None)
    assert jobs.submit("ann", "d", "mst", "req-12345678", lambda job: None) is again  # a retried request


def test_jobs_share_the_slot_round_robin_by_user_within_a_per_user_share(tmp_path):
    """Issue 16: one user's backlog of fits (each epsilon >= 1e-6: nearly free) must not make another user wait
    behind all of it, nor grow without bound. Beyond their share a user gets RateLimited and nothing is created;
    a free slot goes to the user least recently served."""
    from collections import defaultdict

    from workbench.channels.synth.jobs import SynthJobs
    from workbench.errors import RateLimited
    from workbench.node.fairness import UserLimiter

    fair = UserLimiter(synthesis=3)
    jobs = SynthJobs(tmp_path, slots=1, fair=fair)
    started, finish, order = defaultdict(threading.Event), defaultdict(threading.Event), []

    def fit(job):
        order.append(job.job_id)
        started[job.job_id].set()
        assert finish[job.job_id].wait(60)

    e1 = jobs.submit("eve", "d", "mst", None, fit)
    assert started[e1.job_id].wait(60), "the first job never started"
    e2, e3 = (jobs.submit("eve", "d", "mst", None, fit) for _ in range(2))
    with pytest.raises(RateLimited) as refused:
        jobs.submit("eve", "d", "mst", None, fit)
    assert refused.value.retry_after_s >= 1 and refused.value.details["kind"] == "synthesis"
    assert len([j for j in jobs._jobs.values() if j.user == "eve"]) == 3  # the refused one was never created
    a1 = jobs.submit("ana", "d", "mst", None, fit)  # another user is not limited by eve's share
    finish[e1.job_id].set()
    assert started[a1.job_id].wait(60), "ana waited behind eve's backlog"
    assert order == [e1.job_id, a1.job_id] and jobs.get(e2.job_id, "eve").status == "queued"
    jobs.cancel(e3.job_id, "eve", wait_s=60)  # a cancelled queued job gives its share back
    _poll_until(lambda: fair.in_flight("eve", "synthesis") == 1)  # e1 done, e3 cancelled: e2 remains
    e4 = jobs.submit("eve", "d", "mst", None, fit)
    finish[a1.job_id].set()
    assert started[e2.job_id].wait(60)
    finish[e2.job_id].set()
    assert started[e4.job_id].wait(60)
    finish[e4.job_id].set()
    _poll_until(lambda: fair.in_flight("eve", "synthesis") == 0 and fair.in_flight("ana", "synthesis") == 0)
    assert order == [e1.job_id, a1.job_id, e2.job_id, e4.job_id]
    assert jobs.submit("eve", "d", "mst", None, lambda job: None, queue=False)  # a replay takes no share


def _poll_until(condition, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _tree_model(total: float = 3000.0):
    """A small fitted-looking mbi model: chain a - b - c - d with random potentials."""
    import jax.numpy as jnp
    from mbi import CliqueVector, Domain, Factor, MarkovRandomField, marginal_oracles

    dom = Domain(["a", "b", "c", "d"], [3, 4, 2, 5])
    cliques = [("a", "b"), ("b", "c"), ("c", "d")]
    rng = np.random.default_rng(0)
    arrays = {cl: Factor(dom.project(cl), jnp.asarray(rng.normal(size=dom.project(cl).shape) * 2)) for cl in cliques}
    potentials = CliqueVector(dom, cliques, arrays)
    marginals = marginal_oracles.message_passing_stable(potentials, total)
    return MarkovRandomField(potentials=potentials, marginals=marginals, total=total)


def test_numpy_marginals_match_mbi_and_stratified_rows_match_the_model():
    from workbench.channels.synth import sampling

    model = _tree_model()
    for attrs in [("a", "c"), ("d", "a"), ("a", "b", "d"), ("c",)]:
        expected = np.asarray(model.project(attrs).datavector(flatten=False))
        assert np.allclose(sampling.project(model, attrs), expected, rtol=1e-9, atol=1e-9)
    rows = 20_000
    data = sampling.synthetic_rows(model, rows, np.random.default_rng(1))
    assert set(data) == {"a", "b", "c", "d"} and all(len(v) == rows for v in data.values())

    def tvd(attrs):
        shape = tuple(model.domain[a] for a in attrs)
        counts = np.bincount(np.ravel_multi_index(tuple(data[a] for a in attrs), shape), minlength=int(np.prod(shape)))
        return 0.5 * np.abs(counts / rows - sampling.project(model, attrs).ravel() / model.total).sum()

    # pairs the model holds are reproduced to within rounding (i.i.d. sampling would be ~0.01 off here) ...
    assert max(tvd(p) for p in [("a", "b"), ("b", "c"), ("c", "d")]) < 0.002
    # ... and no spurious correlation appears between columns the model links only through others
    # (mbi's own "round" sampler ranked rows by position: 2-way TVD 0.15 in our trial)
    assert max(tvd(p) for p in [("a", "c"), ("a", "d"), ("b", "d")]) < 0.02
    assert tvd(("a", "b", "c")) < 0.03


def test_closed_form_lipschitz_matches_mbi_power_iteration():
    import jax.numpy as jnp
    from mbi import Domain, LinearMeasurement

    from workbench.channels.synth import estimation

    dom = Domain(["a", "b", "c", "d"], [3, 4, 2, 5])
    rng = np.random.default_rng(0)
    measured = [(("a",), 2.0), (("b",), 3.0), (("c",), 1.0), (("d",), 5.0), (("a", "b"), 4.0), (("b", "c"), 2.0),
                (("c", "d"), 7.0), (("b",), 1.5)]
    ms = [LinearMeasurement(jnp.asarray(rng.normal(size=dom.size(c))), c, stddev=s) for c, s in measured]
    for subset in (ms, ms[:4]):
        closed, power = estimation.check_against_power_iteration(dom, subset)
        assert closed == pytest.approx(power, rel=1e-6)
    loss, total = estimation.l2_loss(dom, ms)
    assert loss.lipschitz == pytest.approx(estimation.identity_lipschitz(dom, ms)) and total >= 1


def test_finished_jobs_survive_a_restart_in_the_store(tmp_path):
    from workbench.errors import BudgetExceeded
    from workbench.node.store import Store
    from workbench.channels.synth.jobs import SynthJobs

    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    jobs = SynthJobs(tmp_path, slots=1, store=store)

    def refused(job):
        raise BudgetExceeded("over budget", code="budget_exceeded")

    def held(job):
        job.review = {"review_id": 7, "status": "pending"}

    failed = jobs.submit("ann", "d", "mst", None, refused)
    reviewed = jobs.submit("ann", "d", "sdv_real", None, held)
    deadline = time.monotonic() + 60
    while {jobs.get(j.job_id, "ann").status for j in (failed, reviewed)} != {"failed", "done"}:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    from workbench.node.store import SynthJobRecord

    while True:  # the store write follows the status change
        with store.transaction("read") as session:
            if session.query(SynthJobRecord).count() == 2:
                break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    store.dispose()

    restarted = SynthJobs(tmp_path, slots=1, store=Store(f"sqlite:///{tmp_path / 'state.db'}"))
    again = restarted.get(failed.job_id, "ann").view()
    assert again.status == "failed" and again.error.code == "budget_exceeded" and again.release is None
    assert restarted.get(reviewed.job_id, "ann").view().review == {"review_id": 7, "status": "pending"}
    with pytest.raises(NotFound):
        restarted.get(failed.job_id, "bob")  # still only its starter's
    with pytest.raises(NotFound):
        restarted.get("0" * 24, "ann")
    # records older than KEEP_STORED_DAYS go when the next job finishes
    from datetime import timedelta

    from workbench.node.store import utcnow

    with restarted.store.transaction() as session:
        session.get(SynthJobRecord, failed.job_id).finished_at = utcnow() - timedelta(days=31)
    third = restarted.submit("ann", "d", "mst", None, refused)
    while True:
        with restarted.store.transaction("read") as session:
            ids = {r.job_id for r in session.query(SynthJobRecord)}
        if third.job_id in ids:
            break
        assert time.monotonic() < deadline + 60
        time.sleep(0.05)
    assert failed.job_id not in ids and reviewed.job_id in ids


def test_stratified_rows_follow_a_model_with_cycles():
    """Fixed/AIM models need not be trees: columns are drawn given their neighbours in the triangulated graph."""
    import itertools

    import jax.numpy as jnp
    from mbi import CliqueVector, Domain, Factor, MarkovRandomField, marginal_oracles

    from workbench.channels.synth import sampling

    dom = Domain(["a", "b", "c", "d", "e"], [3, 4, 2, 5, 3])
    cliques = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e", "a")]
    rng = np.random.default_rng(0)
    arrays = {cl: Factor(dom.project(cl), jnp.asarray(rng.normal(size=dom.project(cl).shape) * 1.5)) for cl in cliques}
    potentials = CliqueVector(dom, cliques, arrays)
    model = MarkovRandomField(potentials=potentials, marginals=marginal_oracles.message_passing_stable(potentials, 1.0),
                              total=1.0)
    rows = 20_000
    data = sampling.synthetic_rows(model, rows, np.random.default_rng(1))
    for q in itertools.combinations(dom.attrs, 2):
        shape = tuple(dom[x] for x in q)
        counts = np.bincount(np.ravel_multi_index(tuple(data[x] for x in q), shape), minlength=int(np.prod(shape)))
        assert 0.5 * np.abs(counts / rows - sampling.project(model, q).ravel()).sum() < 0.01, q


def test_a_worker_gets_scipys_own_disjoint_set_without_loading_scipy_cluster():
    """The worker binds ``scipy.cluster.hierarchy.DisjointSet`` (all mbi and OpenDP's MST import from it) to SciPy's
    class without loading k-means and scipy.spatial; the class is the one SciPy exports there."""
    import subprocess
    import sys

    from scipy._lib._disjoint_set import DisjointSet
    from scipy.cluster.hierarchy import DisjointSet as exported

    assert DisjointSet is exported
    code = ("import sys; from workbench.channels.synth import worker; worker._light_disjoint_set(); "
            "import mbi.approximate_oracles as o; from opendp.extras.mbi import _mst; "
            "from scipy._lib._disjoint_set import DisjointSet; "
            "assert o.DisjointSet is DisjointSet and 'scipy.spatial' not in sys.modules and "
            "'scipy.cluster.vq' not in sys.modules; d = DisjointSet([1, 2, 3]); d.merge(1, 2); "
            "assert d.connected(1, 2) and not d.connected(1, 3); print('ok')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]
