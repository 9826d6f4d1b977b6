"""Fidelity of DP synthesis on data shaped unlike the benchmark's (issue 20): a few thousand bank customers with
a skewed income, a zero-inflated balance, churn tied strongly to tenure and products tied to the plan. MST at
epsilon 1 must keep more of the pairs than the `independent` baseline, its column shapes close to the data's,
and its synthetic rows must match the real rows no more closely than they match held-out rows of the same
population."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import polars as pl
import pytest

from workbench.channels.synth import domain
from workbench.channels.synth.wire import SynthSpec

pytestmark = pytest.mark.slow

ROWS = 4000
#: Fits per method: one MST fit's 2-way TVD swings (0.063-0.078 in nine fits; one CI fit drew 0.091, as bad as
#: independent's 0.083-0.093; since MST's pair score was fixed, 0.053-0.067 in eight), so the pairs test compares
#: MST's median fit with independent's mean.
FITS = 3
COLUMNS = {
    "cid": {"type": "id"},
    "age": {"type": "int", "bounds": [18, 95]},
    "tenure": {"type": "int", "bounds": [0, 40]},
    "churned": {"type": "bool"},
    "products": {"type": "int", "bounds": [1, 8]},
    "income": {"type": "float", "bounds": [0.0, 300000.0]},
    "balance": {"type": "float", "bounds": [0.0, 250000.0]},
    "score": {"type": "float", "bounds": [300.0, 850.0]},
    "plan": {"type": "category", "categories": ["basic", "plus", "premium"]},
}
NAMES = [c for c in COLUMNS if c != "cid"]
DISCRETE = ["age", "tenure", "churned", "products", "plan"]


def customers(rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    age = np.clip(np.round(18 + rng.gamma(3.0, 9.0, rows)), 18, 95).astype(np.int64)
    tenure = np.clip(rng.geometric(0.12, rows) - 1 + (age - 18) // 12, 0, 40).astype(np.int64)
    churned = rng.random(rows) < np.where(tenure < 2, 0.85, np.where(tenure < 5, 0.3, 0.04))
    income = np.clip(rng.lognormal(10.4 + 0.01 * (age - 40), 0.6, rows), 0, 300000).round(2)
    plan = np.where(income > 60000, rng.choice(["plus", "premium"], rows, p=[0.6, 0.4]),
                    rng.choice(["basic", "plus"], rows, p=[0.8, 0.2]))
    products = np.clip(1 + rng.poisson(np.where(plan == "premium", 3.0, np.where(plan == "plus", 1.5, 0.4))),
                       1, 8).astype(np.int64)
    balance = np.where(rng.random(rows) < 0.35, 0.0, np.clip(rng.gamma(1.5, income * 0.15), 0, 250000)).round(2)
    score = np.clip(rng.normal(650 + 60 * (~churned) - 30 * churned, 70, rows), 300, 850).round(0)
    return pl.DataFrame({"cid": [f"c{i}" for i in range(rows)], "age": age, "tenure": tenure, "churned": churned,
                         "products": products, "income": income, "balance": balance, "score": score, "plan": plan})


def tvd_2way(plan: domain.Plan, real: pd.DataFrame, other: pd.DataFrame) -> float:
    """Mean total variation distance over all pairs of columns, on the public bins."""
    def cells(frame):
        return {c: plan.domains[c].encode(frame[c].astype(object).where(frame[c].notna(), None).tolist())
                for c in NAMES}

    a, b = cells(real), cells(other)
    out = []
    for pair in itertools.combinations(NAMES, 2):
        shape = tuple(plan.domains[c].cells for c in pair)
        dist = [np.bincount(np.ravel_multi_index(tuple(x[c] for c in pair), shape), minlength=int(np.prod(shape)))
                / len(real) for x in (a, b)]
        out.append(0.5 * np.abs(dist[0] - dist[1]).sum())
    return float(np.mean(out))


def copied(real: pd.DataFrame, other: pd.DataFrame, columns: list[str], *, rare_only: bool = False) -> float:
    """Share of the rows of ``other`` equal to some real row in ``columns`` (with ``rare_only``, to a real row that
    is the only one of its kind there: the rows whose copy would single a person out)."""
    counts = real[columns].astype(object).value_counts()
    seen = set(counts[counts == 1].index if rare_only else counts.index)
    return float(np.mean([row in seen for row in other[columns].astype(object).itertuples(index=False, name=None)]))


def quality(real: pd.DataFrame, other: pd.DataFrame, meta: dict) -> tuple[float, float]:
    from sdmetrics.reports.single_table import QualityReport

    report = QualityReport()
    report.generate(real, other, meta, verbose=False)
    parts = dict(zip(report.get_properties()["Property"], report.get_properties()["Score"]))
    return float(report.get_score()), float(parts["Column Shapes"])


@pytest.fixture(scope="module")
def fits(tmp_path_factory):
    """MST and `independent` at epsilon 1, each in a fresh worker process as the node runs it."""
    from workbench.node.settings import DatasetConfig
    from workbench.channels.synth.prepare import run_isolated
    from workbench.channels.synth.sdv_support import sdv_metadata_dict

    root = tmp_path_factory.mktemp("fidelity")
    frame = customers(ROWS, 21)
    path = root / "customers.parquet"
    frame.write_parquet(path)
    info = DatasetConfig(path=path, columns=COLUMNS, max_rows=2 * ROWS).public_info("customers", "v1")
    out = {}
    for method in ("mst", "independent"):
        spec = SynthSpec(method=method, rows=ROWS)
        out[method] = []
        for _ in range(FITS):
            result = run_isolated("synth.fit", {"info": info.model_dump(mode="json"), "path": str(path),
                                                "format": "parquet", "spec": spec.model_dump(mode="json"),
                                                "epsilon": 1.0, "progress_path": None, "jax_cache": None},
                                  timeout_s=600)
            out[method].append(pd.DataFrame(result["table"]["data"], columns=result["table"]["columns"])[NAMES])
    plan = domain.plan(info, SynthSpec(method="independent", rows=1))
    meta = sdv_metadata_dict(info, NAMES)["tables"]["data"]
    return frame.to_pandas()[NAMES], customers(ROWS, 22).to_pandas()[NAMES], out, plan, meta


def test_mst_keeps_more_of_the_pairs_than_independent_columns(fits):
    real, second, out, plan, meta = fits
    mst = float(np.median([tvd_2way(plan, real, rows) for rows in out["mst"]]))
    independent = float(np.mean([tvd_2way(plan, real, rows) for rows in out["independent"]]))
    floor = tvd_2way(plan, real, second)                 # two honest samples of this size already differ
    # measured: 0.61-0.77 of independent's since MST scores pairs on their whole error net of noise (0.65-0.97
    # before, docs/decisions.md, issue 20 third round)
    assert mst < 0.95 * independent, (mst, independent)
    assert mst < 2.0 * floor, (mst, floor)


def test_mst_quality_at_least_independents_with_column_shapes_close_to_the_data(fits):
    real, second, out, plan, meta = fits
    mst_quality, mst_shapes = np.mean([quality(real, rows, meta) for rows in out["mst"]], axis=0)
    independent_quality = np.mean([quality(real, rows, meta)[0] for rows in out["independent"]])
    reference_quality, reference_shapes = quality(real, second, meta)
    # measured at this size: MST 0.825-0.852, independent 0.801-0.820 (the score's pair part swings by +-0.03)
    assert mst_quality > independent_quality - 0.02, (mst_quality, independent_quality)
    assert mst_quality > 0.8 and mst_shapes > reference_shapes - 0.08, (mst_quality, mst_shapes, reference_shapes)


def test_synthetic_rows_match_the_training_rows_no_more_than_held_out_rows(fits):
    """The holdout test for memorisation (as SDMetrics' DCR overfitting protection): synthetic rows equal a real
    person's unique combination of the discrete columns no more often than they equal a held-out person's (a
    second sample of the same population). Measured: within 0.017 of each other for MST, AIM and independent
    fits; synthetic rows that were real rows resampled score 0.55 against 0.19. Whole rows are never copied."""
    real, holdout, out, plan, meta = fits
    resampled = real.sample(frac=1.0, replace=True, random_state=3)
    assert copied(real, resampled, DISCRETE, rare_only=True) > copied(holdout, resampled, DISCRETE, rare_only=True) \
        + 0.2, "the check has teeth: a generator that copies rows fails it"
    for method, fitted in out.items():
        for rows in fitted:
            assert copied(real, rows, NAMES) <= copied(holdout, rows, NAMES) + 0.01, method
            training, held_out = (copied(frame, rows, DISCRETE, rare_only=True) for frame in (real, holdout))
            assert training <= held_out + 0.04, (method, training, held_out)
