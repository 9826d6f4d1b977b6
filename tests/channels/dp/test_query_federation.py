"""The query language across a federation: two real node processes, the same filter, derived columns and
several statistics on each, combined in the notebook (post-processing of each node's DP release)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl
import pytest

import workbench as wb
from tests.conftest import launch
from tests.intervals import fewest_hits, near
from workbench import col
from workbench.errors import NotSupported

HOSPITALS = ("hospital_a", "hospital_b")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("query-federation")
    with ThreadPoolExecutor(2) as pool:
        nodes = list(pool.map(lambda h: launch(root / h, h), HOSPITALS))
    handles = [wb.connect(n.url, token=n.analyst_token) for n in nodes]
    pooled = pl.concat([pl.read_parquet(n.config_path.parent / "data" / f"patients_{h}.parquet")
                        for n, h in zip(nodes, HOSPITALS)])
    yield wb.federation(handles), handles, pooled
    for n in nodes:
        n.stop()


def test_filtered_agg_over_nodes(federation):
    fed, handles, pooled = federation
    old = fed.dataset("patients").filter(col("age") >= 65)
    before = [h.dataset("patients").budget()["epsilon_spent"] for h in handles]
    table = old.group_by("sex").agg(n=wb.count(), cost=wb.mean("cost")).release(epsilon=2.0)
    after = [h.dataset("patients").budget()["epsilon_spent"] for h in handles]
    assert [a - b for a, b in zip(after, before)] == pytest.approx([2.0, 2.0]), "each node charged once"
    truth = pooled.filter(pl.col("age") >= 65)
    for sex in ("F", "M"):
        rows = table[table["sex"] == sex].set_index("statistic")
        part = truth.filter(pl.col("sex") == sex)
        assert near(rows.loc["n"], part.height)
        assert near(rows.loc["cost"], part["cost"].mean())
    again = old.group_by("sex").agg(cost=wb.mean("cost"), n=wb.count()).release(epsilon=2.0)
    assert again.attrs["replayed"]


def test_derived_column_mean_over_nodes(federation):
    fed, _handles, pooled = federation
    d = fed.dataset("patients").with_columns(cpv=(col("cost") / (col("visits") + 1)).clip(0, 5_000))
    out = d.mean("cpv").release(epsilon=1.0)
    true = (pooled["cost"] / (pooled["visits"] + 1)).clip(0, 5_000).mean()
    assert near(out.iloc[0], true)


def test_whole_dataset_channels_refuse_a_filtered_federation(federation):
    fed, _handles, _pooled = federation
    with pytest.raises(NotSupported):
        fed.dataset("patients").filter(col("age") >= 65).secure_sum("cost", epsilon=0.5)
    with pytest.raises(NotSupported):
        fed.dataset("patients").filter(col("age") >= 65).linear_regression(y="cost", x="age", epsilon=0.5)


# ---------------------------------------------------------------- correlation, covariance, regression (pooled moments)


def spent(handles) -> list[float]:
    return [h.dataset("patients").budget()["epsilon_spent"] for h in handles]


def test_correlation_and_regression_over_nodes(federation):
    fed, handles, pooled = federation
    ds = fed.dataset("patients")
    before = spent(handles)
    corr = ds.corr(["age", "bmi", "cost"]).release(epsilon=1.0)
    assert [a - b for a, b in zip(spent(handles), before)] == pytest.approx([1.0, 1.0]), "each node charged once"
    frame = pooled.to_pandas()
    true = frame[["age", "bmi", "cost"]].corr()
    for a, b in (("age", "cost"), ("age", "bmi"), ("bmi", "cost")):
        pair = corr[(corr["row"] == a) & (corr["column"] == b)].iloc[0]
        assert near(pair, true.loc[a, b]), (a, b, pair.to_dict(), true.loc[a, b])
    assert corr.wb.matrix().shape == (3, 3)

    fit = ds.linear_regression(y="cost", x=["age", "bmi"]).release(epsilon=1.0)
    assert fit.attrs["replayed"], "the same moments question as the correlation: a free replay"
    assert spent(handles) == pytest.approx([b + 1.0 for b in before])
    design = np.c_[np.ones(len(frame)), frame["age"], frame["bmi"]]
    beta = np.linalg.lstsq(design, frame["cost"], rcond=None)[0]
    assert list(fit["term"]) == ["intercept", "age", "bmi"]
    for (_, row), b in zip(fit.iterrows(), beta):
        assert near(row, b), (row["term"], row.to_dict(), b)
    assert (fit["se_noise"] > 0).all() and (fit["se"] >= fit["se_sampling"]).all()

    cov = ds.cov(["age", "bmi", "cost"]).release(epsilon=1.0)
    assert cov.attrs["replayed"]
    pair = cov[(cov["row"] == "age") & (cov["column"] == "bmi")].iloc[0]
    true_cov = np.cov(frame["age"], frame["bmi"], ddof=0)[0, 1]
    assert near(pair, true_cov), (pair.to_dict(), true_cov)


def test_moments_of_a_filtered_derived_federation(federation):
    fed, _handles, pooled = federation
    d = fed.dataset("patients").filter(col("age") >= 40).with_columns(
        cpv=(col("cost") / (col("visits") + 1)).clip(0, 5_000))
    fit = d.linear_regression(y="cpv", x="age").release(epsilon=1.5)
    kept = pooled.filter(pl.col("age") >= 40).with_columns(
        cpv=(pl.col("cost") / (pl.col("visits") + 1)).clip(0, 5_000)).to_pandas()
    beta = np.linalg.lstsq(np.c_[np.ones(len(kept)), kept["age"]], kept["cpv"], rcond=None)[0]
    assert fit["lower"].iloc[1] - (fit["upper"].iloc[1] - fit["lower"].iloc[1]) / 2 <= beta[1]
    assert beta[1] <= fit["upper"].iloc[1] + (fit["upper"].iloc[1] - fit["lower"].iloc[1]) / 2
    preview = d.corr(["age", "cpv"]).preview(epsilon=1.5)
    assert set(preview.nodes["node"]) == {h.url for h in fed.nodes}


def test_moments_with_different_bounds_refused_before_charging(federation):
    from workbench.client.dataset import RemoteDataset
    from workbench.client.federation import FederatedDataset

    fed, handles, _pooled = federation
    first, second = fed.dataset("patients").handles
    columns = [c.model_copy(update={"bounds": (0.0, 80.0)}) if c.name == "bmi" else c for c in second.schema.columns]
    info = second.schema.model_copy(update={"columns": columns})  # as if the second owner declared other bounds
    mixed = FederatedDataset(fed, [first, RemoteDataset(second.node, info, second.grant_id)])
    before = spent(handles)
    with pytest.raises(wb.WorkbenchError) as caught:
        mixed.corr(["age", "bmi"]).release(epsilon=1.0)
    assert caught.value.code == "bounds_mismatch" and "bmi" in caught.value.message
    assert spent(handles) == pytest.approx(before)
    with pytest.raises(wb.WorkbenchError) as caught:
        fed.dataset("patients").linear_regression(y="cost", x="age", mode="conservative")
    assert caught.value.code == "invalid_query"


# ---------------------------------------------------------------- var, std and quantiles in a federated agg


def test_spread_and_quantiles_over_nodes(federation):
    fed, handles, pooled = federation
    old = fed.dataset("patients").filter(col("age") >= 30)
    question = old.group_by("sex").agg(n=wb.count(), sd=wb.std("cost"), v=wb.var("bmi"), p50=wb.median("age"),
                                       p90=wb.quantile("age", 0.9), cost=wb.mean("cost"))
    before = spent(handles)
    preview = question.preview(epsilon=3.0)
    assert spent(handles) == pytest.approx(before), "a preview spends nothing"
    assert len(preview.nodes) > 0
    table = question.release(epsilon=3.0)
    assert [a - b for a, b in zip(spent(handles), before)] == pytest.approx([3.0, 3.0]), "epsilon in all, per node"
    assert table.attrs["epsilon_charged"] == {h.url: pytest.approx(3.0) for h in fed.nodes}
    truth = pooled.filter(pl.col("age") >= 30)
    for sex in ("F", "M"):
        rows = table[table["sex"] == sex].set_index("statistic")
        part = truth.filter(pl.col("sex") == sex)
        checks = {"n": part.height, "sd": part["cost"].std(ddof=0), "v": part["bmi"].var(ddof=0),
                  "cost": part["cost"].mean(), "p50": _lower_quantile(part["age"], 0.5),
                  "p90": _lower_quantile(part["age"], 0.9)}
        for name, true in checks.items():
            row = rows.loc[name]
            assert near(row, true), (sex, name, row.to_dict(), true)
        assert abs(rows.loc["p50", "estimate"] - checks["p50"]) <= 3
    again = old.group_by("sex").agg(p90=wb.quantile("age", 0.9), n=wb.count(), cost=wb.mean("cost"),
                                    v=wb.var("bmi"), p50=wb.median("age"), sd=wb.std("cost")).release(epsilon=3.0)
    assert again.attrs["replayed"] and spent(handles) == pytest.approx([b + 3.0 for b in before])


def _lower_quantile(values: pl.Series, p: float) -> float:
    """The least v with #(x <= v) >= p n (what the histogram quantile estimates)."""
    ordered = values.sort().to_list()
    return ordered[max(int(np.ceil(p * len(ordered))) - 1, 0)]


def test_federated_spread_refusals_charge_nothing(federation):
    fed, handles, _pooled = federation
    ds = fed.dataset("patients")
    before = spent(handles)
    with pytest.raises(NotSupported):
        ds.agg(p50=wb.median("age")).release(epsilon=1.0, delta=1e-6)
    with pytest.raises(wb.WorkbenchError) as caught:
        ds.with_columns(ratio=col("cost") / (col("visits") + 1)).agg(sd=wb.std("ratio"))
    assert caught.value.code == "bad_bounds"
    with pytest.raises(wb.WorkbenchError) as caught:
        ds.agg(q=wb.quantile("age", 1.5))
    assert caught.value.code == "bad_quantile"
    assert spent(handles) == pytest.approx(before)


@pytest.mark.slow
def test_pooled_spread_and_quantile_intervals_cover(tmp_path):
    """Coverage of the pooled intervals over many releases: three "nodes" (files of different sizes) answer the
    federated agg's parts through the node's own DP engine; the kernel's pooling must cover the truth >= 95%."""
    from types import SimpleNamespace

    import pandas as pd

    from workbench.channels.dp import worker as engine
    from workbench.channels.dp.federated_agg import federated_agg
    from workbench.client.dataset import RemoteDataset
    from workbench.client.federation import FederatedDataset
    from workbench.protocol import DatasetInfo

    info = DatasetInfo(name="cover", tier="private", max_rows=10_000,
                       columns=[{"name": "x", "type": "int", "bounds": [0, 100]},
                                {"name": "y", "type": "float", "bounds": [0.0, 10.0]}])
    rng = np.random.default_rng(5)
    files = []
    for i, size in enumerate((3000, 2000, 1000)):
        path = tmp_path / f"node{i}.parquet"
        pl.DataFrame({"x": rng.integers(20, 81, size), "y": rng.uniform(0, 10, size) ** 1.5 / 3.2}) \
            .write_parquet(path)
        files.append(path)
    everything = pl.concat([pl.read_parquet(f) for f in files])
    ys, xs = everything["y"].to_numpy(), sorted(everything["x"].to_list())
    truth = {"sd": float(ys.std()), "v": float(ys.var()), "med": xs[int(np.ceil(0.5 * len(xs))) - 1]}
    fds = FederatedDataset(None, [RemoteDataset(None, info)])
    question = federated_agg(fds, [], {"sd": wb.std("y"), "v": wb.var("y"), "med": wb.median("x")})
    nodes = [SimpleNamespace(node=SimpleNamespace(url=f"node{i}")) for i in range(3)]

    def release(path, spec, epsilon, role):
        task = {"info": info.model_dump(mode="json"), "query": spec.model_dump(mode="json", exclude_none=True),
                "epsilon": epsilon, "delta": 0.0, "alpha": 0.05, "path": str(path), "format": "parquet",
                "mode": "release", "cache_key": f"cover|{path}|{role}"}
        table = engine.run(task)["table"]
        frame = pd.DataFrame(table["data"], columns=table["columns"])
        frame.attrs.update({"alpha": 0.05, "part": role})
        return frame

    hits, widths = {name: 0 for name in truth}, {name: [] for name in truth}
    runs = 150
    for _ in range(runs):
        frames = [(h, None, release(path, spec, 10.0 * share, role))
                  for h, path in zip(nodes, files) for role, spec, share in question.parts]
        table = question._combine(frames).set_index("statistic")
        for name, true in truth.items():
            hits[name] += table.loc[name, "lower"] <= true <= table.loc[name, "upper"]
            widths[name].append(table.loc[name, "upper"] - table.loc[name, "lower"])
    # informative intervals (not the whole range), so that covering is a claim that could fail
    assert np.mean(widths["med"]) < 10 and np.mean(widths["v"]) < truth["v"] and np.mean(widths["sd"]) < truth["sd"]
    for name, hit in hits.items():
        assert hit >= fewest_hits(runs), f"{name}: the pooled 95% interval covered the truth in {hit / runs:.1%} of runs"
