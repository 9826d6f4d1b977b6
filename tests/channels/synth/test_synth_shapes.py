"""Within-bin shapes of DP synthesis (issue 20): fine public bins, the sampler that follows the DP fine
marginal, the privacy accounting of the split budget, the NumPy estimator, and a report of DP numbers only."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workbench.protocol import ColumnInfo, DatasetInfo
from workbench.channels.synth import domain
from workbench.channels.synth import shapes
from workbench.channels.synth.wire import SynthSpec


def _column(name: str, type_: str, bounds) -> domain.ColumnDomain:
    return domain.column_domain(ColumnInfo(name=name, type=type_, bounds=bounds), 16)


# ---------------------------------------------------------------- fine bins (public metadata only)


def test_fine_bins_nest_in_the_public_bins_and_keep_one_cell_per_small_integer_domain():
    rng = np.random.default_rng(0)
    age, cost = _column("age", "int", [0, 100]), _column("cost", "float", [0.0, 5000.0])
    fine_age, fine_cost = shapes.fine_bins(age), shapes.fine_bins(cost)
    assert fine_age.cells == 101 and fine_age.labels()[:3] == ["0", "1", "2"]        # one cell per year
    assert fine_cost.cells == 16 * shapes.FINE_PER_BIN
    assert set(cost.cuts) <= set(fine_cost.cuts)                                     # every public cut kept
    big = shapes.fine_bins(_column("big", "int", [0, 100_000]))
    assert 16 < big.cells <= 16 * shapes.FINE_PER_BIN
    assert shapes.fine_bins(_column("visits", "int", [0, 10])) is None               # already one cell a value
    assert shapes.fine_bins(domain.column_domain(ColumnInfo(name="s", type="bool"), 16)) is None
    for coarse, fine in ((age, fine_age), (cost, fine_cost), (_column("big", "int", [0, 100_000]), big)):
        lo, hi = coarse.edges[0], coarse.edges[-1]
        for cell in range(fine.cells):
            values = fine.decode(np.full(50, cell), rng)
            assert ((values >= lo) & (values <= hi)).all()
            assert (fine.encode(values) == cell).all()                                  # back into its fine cell
            assert set(coarse.encode(values.tolist())) == {fine.parent[cell]}           # ... inside its parent


# ---------------------------------------------------------------- the within-bin sampler


def test_within_bin_sampler_follows_the_fine_marginal_not_a_uniform_spread():
    rng = np.random.default_rng(1)
    cost = _column("cost", "float", [0.0, 1600.0])                # 16 coarse bins of 100
    fine = shapes.fine_bins(cost)
    # a fine marginal rising steeply inside every coarse bin (plus one negative noisy count)
    noisy = np.tile(np.arange(1, shapes.FINE_PER_BIN + 1, dtype=float) ** 2, 16)
    noisy[3] = -40.0
    shares = shapes.conditional_shares(fine, noisy)
    coarse = rng.integers(0, 16, 20_000)
    cells = shapes.within_bin_cells(coarse, fine, shares, rng)
    assert (np.asarray(fine.parent)[cells] == coarse).all()     # the model's coarse cells are kept exactly
    for b in range(16):
        mine = cells[coarse == b]
        counts = np.bincount(mine - b * shapes.FINE_PER_BIN, minlength=shapes.FINE_PER_BIN)
        assert np.abs(counts - shares[b] * len(mine)).max() <= 1.0    # each bin's fine counts within a row
    assert shares[0][3] == 0.0 and (cells != 3).all()                # a negative noisy count gets no rows
    values = fine.decode(cells, rng)
    target = np.concatenate(shares) / 16                        # coarse cells are uniform here
    grid = np.asarray(fine.edges[1:])
    cdf_target = np.cumsum(target)
    cdf_synth = np.searchsorted(np.sort(values), grid, side="right") / len(values)
    uniform_at_grid = np.interp(grid, np.asarray(cost.edges), np.arange(17) / 16)
    assert np.abs(cdf_synth - cdf_target).max() < 0.01              # follows the fine marginal ...
    assert np.abs(uniform_at_grid - cdf_target).max() > 0.02         # ... which a uniform spread would not


def test_supported_range_ignores_isolated_noise_in_empty_tails_but_keeps_thin_real_tails():
    rng = np.random.default_rng(2)
    std = 20.0
    body = np.concatenate([np.zeros(20), np.full(40, 400.0), np.linspace(60, 12, 30), np.zeros(38)])
    escaped, tail = 0, []
    for _ in range(200):
        noisy = body + rng.laplace(0, std / np.sqrt(2), len(body))
        mask = shapes.supported(noisy, std)
        assert mask[20:60].all()                                   # the bulk
        tail.append(mask[60:80].sum())                             # a thin tail: 60 -> 28 rows a cell
        escaped += bool(mask[100:].any() or mask[:10].any())       # noise alone, 10+ cells from the data
    assert np.mean(tail) >= 18 and np.min(tail) >= 10
    assert escaped <= 8
    spike = body.copy()
    spike[120] = 3 * std                                           # one loud empty cell far out
    assert not shapes.supported(spike, std)[110:].any()
    allowed = shapes.coarse_allowed(shapes.fine_bins(_column("x", "float", [0.0, 128.0])), mask)
    assert allowed.dtype == bool and allowed[3:7].all() and not allowed[-1]


# ---------------------------------------------------------------- privacy accounting


def test_supported_range_is_not_captured_by_a_noise_spike_and_keeps_a_margin_of_public_bins():
    rng = np.random.default_rng(3)
    score = _column("score", "float", [300.0, 850.0])             # 16 public bins, 128 fine cells
    fine = shapes.fine_bins(score)
    body = np.concatenate([np.zeros(60), np.full(60, 60.0), np.linspace(30, 5, 8)])   # spread out, no tall cell
    for _ in range(50):
        noisy = body + rng.laplace(0, 25, len(body))
        noisy[5] = 200.0                                           # a noise spike taller than any real cell
        mask = shapes.supported(noisy, 35.0)
        assert mask[70:115].all() and not mask[5]                  # the range is the body's, not the spike's
        wide = shapes.widened(fine, mask)
        parent = np.asarray(fine.parent)
        kept = np.unique(parent[mask])
        assert set(np.unique(parent[wide])) == set(range(max(kept[0] - shapes.RANGE_MARGIN_BINS, 0),
                                                         min(kept[-1] + shapes.RANGE_MARGIN_BINS, 15) + 1))
        assert not wide[5]                                         # the margin is public bins, not the spike


def test_margin_is_one_public_bin_when_the_noise_is_a_small_share_of_the_rows():
    """Many rows against the noise: a tail the range rule can cut is thin, one bin of margin; few rows: two."""
    rng = np.random.default_rng(4)
    visits = _column("visits", "int", [0, 50])                  # one fine cell per value, 51 cells
    fine = shapes.fine_bins(visits)
    shape = np.exp(-0.35 * np.arange(51))
    for rows, std, margin in ((30_000, 28.3, 1), (4_000, 35.4, 2), (10_000, 28.3, 2)):
        for _ in range(20):
            noisy = rows * shape / shape.sum() + rng.laplace(0, std / np.sqrt(2), 51)
            assert shapes.margin_bins(noisy, std) == margin, (rows, std)
            mask = shapes.supported(noisy, std)
            kept = np.unique(np.asarray(fine.parent)[mask])
            wide = np.unique(np.asarray(fine.parent)[shapes.widened(fine, mask, margin)])
            assert wide[-1] == min(kept[-1] + margin, 15)


def test_a_tail_past_the_supported_range_tapers_off_instead_of_stopping_dead_or_following_noise():
    """A thin real tail (visits 16-18: 15 of 30k rows) is below the noise: the model's mass for its margin bin was
    the clipped noise (0 in half the fits, so the synthetic maximum jumped between 15 and 18) and the fine counts
    left holes. The margin bin now holds at least the last supported bin's mass times the tail's ratio, falling
    inside the bin, and one public bin past the margin holds that floor alone; a margin bin the model already fills
    keeps its mass; nothing lies further out."""
    rng = np.random.default_rng(5)
    visits = _column("visits", "int", [0, 50])                  # public bins 0-2, 3-5, ..., fine cell per value
    fine = shapes.fine_bins(visits)
    parent = np.asarray(fine.parent)
    real = np.array([1762, 4190, 5086, 4625, 3595, 2727, 2225, 1790, 1395, 1036, 710, 394, 232, 136, 54, 27,
                     10, 3, 2, 0, 1] + [0] * 30, dtype=float)
    for _ in range(20):
        noisy = real + rng.laplace(0, 20, 51)
        support = shapes.supported(noisy, 28.3)
        wide = shapes.widened(fine, support, 1)
        edge = int(parent[np.flatnonzero(support)[-1]])
        mass = np.bincount(parent, weights=real, minlength=16)
        mass[edge + 1:] = 1e-6                                   # the model put ~nothing past the edge bin
        counts, weights = shapes.tapered(fine, noisy, support, wide, mass)
        tilted = mass * weights
        ratio = min(mass[edge] / mass[edge - 1], shapes.TAIL_MAX_RATIO)
        assert tilted[edge + 1] == pytest.approx(mass[edge] * ratio) and tilted[edge + 1] > 0
        assert (weights[:edge + 1][np.unique(parent[support])] == 1).all()        # supported bins: the model's mass
        last = int(parent[wide].max())                            # one more bin carries the floor alone
        assert tilted[last + 1] == pytest.approx(mass[edge] * ratio ** (last + 1 - edge))
        assert (weights[last + 2:] == 0).all() and (counts[parent > last + 1] == 0).all()
        inside = counts[parent == edge + 1]
        assert (inside > 0).all() and (np.diff(inside) < 0).all()                 # no holes, falling
        full = mass.copy()
        full[edge + 1] = 10 * mass[edge]                          # a margin bin the model fills is left alone
        assert shapes.tapered(fine, noisy, support, wide, full)[1][edge + 1] == 1.0


def test_with_many_rows_the_supported_range_rarely_runs_on_into_an_empty_tail():
    """A window of empty cells passes 1 noise std with probability 16% and the next windows share all but one
    cell, so a range that passes once runs on (at 30k patients `visits` reached 25-42 where the data stop at 20).
    With the noise a small share of the rows (margin 1) the range needs 2 stds; with few rows it keeps 1."""
    rng = np.random.default_rng(7)
    real = np.array([1762, 4190, 5086, 4625, 3595, 2727, 2225, 1790, 1395, 1036, 710, 394, 232, 136, 54, 27,
                     10, 3, 2, 0, 1] + [0] * 30, dtype=float)
    std = 28.3
    assert shapes.tail_stds(shapes.margin_bins(real, std)) == shapes.THIN_TAIL_NOISE_STDS
    assert shapes.tail_stds(shapes.margin_bins(real / 8, std)) == shapes.TAIL_NOISE_STDS
    ran_on = {1.0: 0, 2.0: 0}
    for _ in range(300):
        noisy = real + rng.laplace(0, std / np.sqrt(2), len(real))
        for stds in ran_on:
            ran_on[stds] += int(np.flatnonzero(shapes.supported(noisy, std, stds))[-1] > 22)
    assert ran_on[2.0] <= 0.04 * 300 and ran_on[1.0] >= 2 * ran_on[2.0] + 5, ran_on


def test_budget_shares_add_up_to_the_charged_epsilon_and_are_stated():
    from workbench.channels.synth import worker as fit

    shares = fit.budget_shares("mst", 1.5, 4)
    assert shares["model"] + shares["shapes"] == pytest.approx(1.0)
    assert shares["model_epsilon"] + shares["shapes_epsilon"] == pytest.approx(1.5)
    assert shares["shapes"] == fit.SHAPE_SPLIT and shares["shapes_epsilon_per_column"] == pytest.approx(
        1.5 * fit.SHAPE_SPLIT / 4)
    text = fit.privacy_paragraph(SynthSpec(rows=1), shares, {"age": 0, "bmi": 0, "visits": 0, "cost": 0})
    assert "epsilon = 1.5 in total" in text and "One sequential composition" in text
    assert f"{fit.SHAPE_SPLIT:.0%}" in text and "age, bmi, visits, cost" in text
    none = fit.budget_shares("mst", 1.5, 0)                      # no column to shape: all to the model
    assert none["model_epsilon"] == 1.5 and none["shapes"] == 0.0
    assert "fine one-way" not in fit.privacy_paragraph(SynthSpec(rows=1), none, {})


def test_one_compositor_holds_both_queries_and_refuses_a_third():
    from workbench.channels.synth import worker as fit

    info = DatasetInfo.model_validate({
        "name": "t", "tier": "private", "max_rows": 1000,
        "privacy_unit": {"id_column": "pid", "max_contributions": 2},
        "columns": [{"name": "pid", "type": "id"}, {"name": "x", "type": "float", "bounds": [0.0, 1.0]}]})
    dp = fit._opendp()
    dp.enable_features("contrib")
    data = pl.LazyFrame({"x": np.linspace(0, 1, 100)})
    shares = fit.budget_shares("mst", 2.0, 1)
    ctx = fit.compositor(dp, data, info, shares)
    # the fine marginals are asked first (the model uses them), so the first share is theirs
    assert ctx.d_mids == pytest.approx([2.0 * fit.SHAPE_SPLIT, 2.0 * (1 - fit.SHAPE_SPLIT)])
    assert ctx.accountant.map(ctx.d_in) == pytest.approx(2.0, rel=1e-6)          # the charge, no more
    assert ctx.accountant.map(ctx.d_in) <= 2.0 * (1 + 1e-9)
    for _ in range(2):
        ctx.query().select(dp.polars.dp_len()).release().collect()
    with pytest.raises(ValueError, match="exhausted"):
        ctx.query()


# ---------------------------------------------------------------- estimators (post-processing, no JAX compile)


def _measurements(cliques, seed=0):
    from mbi import Domain, LinearMeasurement

    dom = Domain(["a", "b", "c", "d"], [3, 4, 2, 5])
    rng = np.random.default_rng(seed)
    truth = rng.dirichlet(np.full(dom.size(), 0.5)).reshape(dom.shape) * 4000
    out = []
    for c in cliques:
        axes = tuple(i for i, a in enumerate(dom.attrs) if a not in c)
        exact = truth.sum(axis=axes).ravel()
        out.append(LinearMeasurement(exact + rng.laplace(0, 15, exact.size), c, stddev=15 * np.sqrt(2)))
    return dom, out


def _brute_force(dom, theta: dict, total: float, attrs: tuple) -> np.ndarray:
    joint = np.zeros(dom.shape)
    for clique, values in theta.items():
        shape = [dom[a] if a in clique else 1 for a in dom.attrs]
        order = [clique.index(a) for a in dom.attrs if a in clique]
        joint = joint + np.transpose(values, order).reshape(shape)
    p = np.exp(joint - joint.max())
    p = p.sum(axis=tuple(i for i, a in enumerate(dom.attrs) if a not in attrs)) * total / p.sum()
    return np.transpose(p, [tuple(a for a in dom.attrs if a in attrs).index(a) for a in attrs])


def test_junction_tree_marginals_are_exact_on_a_cycle_and_on_a_forest():
    from workbench.channels.synth.mirror_descent import JunctionTree

    dom, _ = _measurements([("a",)])
    rng = np.random.default_rng(4)
    for cliques in ([("a", "b"), ("b", "c"), ("a", "c"), ("c", "d")], [("a", "b"), ("c", "d")]):
        theta = {c: rng.normal(size=dom.project(c).shape) * 2 for c in cliques}
        got = JunctionTree(dom, cliques).marginals(theta, 1000.0)
        for c in cliques:
            assert np.allclose(got[c], _brute_force(dom, theta, 1000.0, c), rtol=1e-9, atol=1e-9)


@pytest.mark.slow  # mbi's JAX compilation: seconds when idle, minutes on a loaded machine
def test_numpy_mirror_descent_matches_mbi_on_a_cycle_and_on_a_forest():
    from mbi.estimation import mirror_descent as mbi_mirror_descent

    from workbench.channels.synth import estimation
    from workbench.channels.synth.mirror_descent import mirror_descent

    # a cycle (one 3-way clique in the junction tree), and a forest of two unconnected parts
    for cliques in ([("a", "b"), ("b", "c"), ("a", "c"), ("c", "d"), ("a",)], [("a", "b"), ("c", "d"), ("b",)]):
        dom, ms = _measurements(cliques)
        loss, total = estimation.l2_loss(dom, ms)
        expected = mbi_mirror_descent(dom, loss, known_total=total, iters=150)
        got = mirror_descent(dom, ms, total, loss.lipschitz, iters=150)
        for attrs in [("a", "b"), ("a", "c"), ("c", "d"), ("b", "d")]:
            a = np.asarray(expected.project(attrs).datavector(flatten=False))
            b = np.asarray(got.project(attrs).datavector(flatten=False))
            assert np.abs(a - b).sum() / total < 1e-6


def test_closed_form_oneway_model_is_the_l2_optimum():
    from workbench.channels.synth import estimation

    dom, ms = _measurements([("a",), ("b",), ("c",), ("d",), ("b",)], seed=3)
    ms[0] = type(ms[0])(np.array([900.0, -30.0, 3100.0]), ("a",), stddev=ms[0].stddev)   # a negative count
    model = estimation.oneway_model(dom, ms)
    assert estimation.only_oneway(ms)
    a = np.asarray(model.project(("a",)).datavector())
    assert a.min() >= 0 and a.sum() == pytest.approx(model.total)
    assert a[1] / model.total < 1e-5                                       # projected onto the simplex
    # merged 'b' measurements: no feasible perturbation lowers the loss
    loss, _ = estimation.l2_loss(dom, ms)
    b = np.asarray(model.project(("b",)).datavector())
    base = sum(0.5 * np.sum((np.asarray(m.noisy_measurement) - b) ** 2) / m.stddev ** 2
               for m in ms if m.clique == ("b",))
    for i, j in [(0, 1), (2, 3), (1, 3)]:
        moved = b.copy()
        moved[i] += 5.0
        moved[j] -= 5.0
        worse = sum(0.5 * np.sum((np.asarray(m.noisy_measurement) - moved) ** 2) / m.stddev ** 2
                    for m in ms if m.clique == ("b",))
        assert worse >= base


# ---------------------------------------------------------------- a real fit in its worker process

SKEWED_COLUMNS = {
    "pid": {"type": "id"},
    "age": {"type": "int", "bounds": [0, 100]},
    "cost": {"type": "float", "bounds": [0.0, 1600.0]},
    "group": {"type": "category", "categories": ["a", "b", "c"]},
    "flag": {"type": "bool"},
}


def _skewed(rows: int, seed: int) -> pl.DataFrame:
    """Real rows whose numeric shapes a uniform spread inside 16 bins cannot copy (a skewed cost, ages
    clustered on a few years)."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b", "c"], rows, p=[0.5, 0.3, 0.2])
    cost = np.clip(rng.exponential(np.where(group == "a", 40.0, 300.0)), 0, 1600)
    age = np.clip(np.round(rng.normal(40, 3, rows)) + 10 * (group == "c"), 0, 100).astype(np.int64)
    return pl.DataFrame({"pid": [f"p{i}" for i in range(rows)], "age": age, "cost": cost, "group": group,
                         "flag": rng.random(rows) < 0.3})


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One MST fit at epsilon 2 as the node runs it (a fresh worker process), and the real rows."""
    from workbench.node.settings import DatasetConfig
    from workbench.channels.synth.prepare import run_isolated

    root = tmp_path_factory.mktemp("shapes")
    frame = _skewed(4000, 11)
    path = root / "skewed.parquet"
    frame.write_parquet(path)
    info = DatasetConfig(path=path, columns=SKEWED_COLUMNS, max_rows=8000).public_info("skewed", "v1")
    spec = SynthSpec(method="mst", rows=4000)
    out = run_isolated("synth.fit", {"info": info.model_dump(mode="json"), "path": str(path), "format": "parquet",
                             "spec": spec.model_dump(mode="json"), "epsilon": 2.0, "progress_path": None,
                             "jax_cache": None}, timeout_s=600)
    return frame.to_pandas(), out, domain.plan(info, spec)


def test_fit_states_its_budget_shares_and_values_follow_the_dp_shapes(fitted):
    real, out, plan = fitted
    report = out["report"]
    budget = report["budget"]
    assert budget["epsilon"] == 2.0 == report["epsilon"]
    assert budget["model_epsilon"] + budget["shapes_epsilon"] == pytest.approx(2.0)   # the charge is unchanged
    assert budget["shape_columns"] == ["age", "cost"] and "epsilon = 2 in total" in report["privacy"]
    syn = dict(zip(out["table"]["columns"], zip(*out["table"]["data"])))
    shape = {s["column"]: s for s in report["shapes"]}
    assert set(shape) == {"age", "cost", "group", "flag"} and shape["cost"]["cells"] == 16 * shapes.FINE_PER_BIN
    # inside the public bins, synthetic costs follow the (skewed) real shape, which a uniform spread does not
    cost_bins = plan.domains["cost"]
    fine = shapes.fine_bins(cost_bins)
    first = np.asarray([v for v in syn["cost"] if v <= cost_bins.edges[1]])
    real_first = real["cost"][real["cost"] <= cost_bins.edges[1]].to_numpy()
    grid = np.asarray(fine.edges[1: shapes.FINE_PER_BIN])
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)   # noqa: E731
    uniform = (grid - cost_bins.edges[0]) / (cost_bins.edges[1] - cost_bins.edges[0])
    assert np.abs(cdf(first) - cdf(real_first)).max() < 0.05
    assert np.abs(uniform - cdf(real_first)).max() > 0.15
    ages = np.asarray(syn["age"])
    # the empty public range stays (almost) empty: at most the margin of public bins kept beyond the supported
    # range (age bins are ~6 years wide), plus one bin the noisy range may reach past the data (1 fit in 20
    # here), and very few values there
    width = plan.domains["age"].edges[2] - plan.domains["age"].edges[1]
    margin = (shapes.RANGE_MARGIN_BINS + 1) * width + 1
    assert ages.min() >= real["age"].min() - margin and ages.max() <= real["age"].max() + margin
    assert ((ages < real["age"].min()) | (ages > real["age"].max())).mean() < 0.01
    assert np.isin(ages, real["age"].unique()).mean() > 0.98


def test_fit_report_holds_only_dp_numbers(fitted):
    """Every statistic in the report is rebuilt from the released noisy marginals and the synthetic rows;
    none equals the real data's own."""
    real, out, plan = fitted
    report = out["report"]
    allowed = {"dp", "synthetic_rows", "tvd_1way_mean", "tvd_2way_mean", "shape_ks_mean", "marginals", "shapes",
               "covered", "not_covered", "method", "epsilon", "delta", "rows", "columns", "dropped",
               "privacy_unit", "budget", "privacy", "mechanism"}
    assert set(report) <= allowed
    syn = dict(zip(out["table"]["columns"], zip(*out["table"]["data"])))
    fine_age = shapes.fine_bins(plan.domains["age"])
    for s in report["shapes"]:
        col = s["column"]
        cells = (fine_age.encode(np.asarray(syn[col], dtype=float)) if col == "age" else
                 shapes.fine_bins(plan.domains[col]).encode(np.asarray(syn[col], dtype=float)) if col == "cost"
                 else plan.domains[col].encode(list(syn[col])))
        synthetic = np.bincount(cells, minlength=s["cells"]) / len(cells)
        assert np.allclose(s["synthetic"], synthetic)                  # the synthetic side: the released rows
        assert sum(s["noisy"]) == pytest.approx(1.0) and min(s["noisy"]) >= 0
        if col == "age":                                               # the DP side is noisy, not the truth
            truth = np.bincount(fine_age.encode(real["age"].to_numpy()), minlength=s["cells"]) / len(real)
            assert not np.allclose(s["noisy"], truth, atol=1e-4)
            assert np.abs(np.asarray(s["noisy"]) - truth).max() < 8 * s["noise_share"]
        assert s["tvd"] == pytest.approx(0.5 * np.abs(np.asarray(s["noisy"]) - synthetic).sum())
    # Noisy totals, not the row count: discrete noise may hit the count exactly now and then (about 1 in 50 per
    # marginal here), so a copy of the row count shows as most totals matching it, not as one.
    noisy = [m["noisy_total"] for m in report["marginals"] if m["noise_std"] > 0]
    assert noisy and sum(t == len(real) for t in noisy) <= max(1, len(noisy) // 3), noisy


def test_report_shows_column_shapes_with_a_plot(fitted):
    from workbench.channels.synth.report import FidelityReport

    report = FidelityReport(fitted[1]["report"], epsilon_charged=2.0)
    table = report.shapes()
    assert list(table["column"]) == ["age", "cost", "group", "flag"] and table["ks"].iloc[:2].notna().all()
    assert "column shapes" in report.summary() and report.budget["shapes"] > 0
    fig = report.plot_shapes()
    assert len([a for a in fig.axes if a.get_visible() and a.has_data()]) == 4
    html = report._repr_html_()
    assert html.count("<img") == 2 and "One sequential composition" in html


@pytest.mark.slow
def test_published_mock_uses_the_same_sampler(service):
    from workbench.demo.nodes import ensure_accounts
    from workbench.channels.synth import mocks

    ensure_accounts(service)
    spec = SynthSpec(method="independent", rows=600, columns=["age", "cost", "sex"])
    mocks.publish_with_progress(service, "patients", spec, 1.0, None, progress=False)
    mock = mocks.get(service, service.catalog.get("patients"))
    assert mock.report["budget"]["shape_columns"] == ["age", "cost"]
    assert {s["column"] for s in mock.report["shapes"]} == {"age", "cost", "sex"}
    cost = np.asarray([row[1] for row in mock.table.data], dtype=float)
    # values spread by the DP fine marginal: many distinct fine cells are used inside the public bins
    fine = shapes.fine_bins(domain.column_domain(service.catalog.get("patients").info.column("cost"), 16))
    assert len(np.unique(fine.encode(cost))) > 16


def test_the_sampler_weights_cells_so_a_tapered_tail_gets_the_rows_it_was_given():
    """``allowed`` weights tilt the model's shares (a tapered tail the model left near empty gets its floor);
    weight 0 removes a cell."""
    from mbi import Domain, LinearMeasurement

    from workbench.channels.synth import estimation, sampling

    dom = Domain(["x"], [4])
    model = estimation.oneway_model(dom, [LinearMeasurement(np.array([1000.0, 1000.0, 1000.0, 0.0]), clique=("x",),
                                                            stddev=1.0)])
    near_empty = float(sampling.project(model, ("x",))[3])
    assert near_empty < 1.0                                         # the model's tail: ~nothing
    weights = np.array([1.0, 1.0, 0.0, 500.0 / near_empty])        # tail tilted to 500 rows' worth, cell 2 removed
    rows = sampling.synthetic_rows(model, 10_000, np.random.default_rng(6), allowed={"x": weights})["x"]
    counts = np.bincount(rows, minlength=4)
    assert counts[2] == 0
    assert abs(counts[3] - 10_000 * 500 / 2500) <= 1 and abs(counts[0] - counts[1]) <= 1
