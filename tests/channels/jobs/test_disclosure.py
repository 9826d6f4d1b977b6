"""The automatic disclosure checks on outputs written the way a job writes them (pandas), against the real rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workbench.channels.jobs import disclosure

KEYS = ["diagnosis", "region", "sex", "smoker", "readmitted"]


@pytest.fixture
def ctx(service):
    return disclosure.context(service.catalog.get("patients"))


@pytest.fixture
def rows(service) -> pd.DataFrame:
    return pd.read_parquet(service.catalog.get("patients").path)


def failed(checks) -> set[str]:
    return {c.check for c in checks if not c.ok}


def csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def test_an_honest_summary_passes_every_check(ctx, rows):
    summary = rows.groupby(["sex", "diagnosis"]).agg(n=("age", "size"), mean_cost=("cost", "mean")).reset_index()
    assert failed(disclosure.check("summary.csv", csv(summary), ctx)) == set()


def test_small_cells_are_flagged_from_the_real_group_sizes(ctx, rows):
    sizes = rows.groupby(KEYS).size().rename("patients").reset_index()
    assert (sizes["patients"] < 10).any()  # the demo data has some small five-way cells
    checks = disclosure.check("fine.csv", csv(sizes.drop(columns="patients")), ctx)
    cell = next(c for c in checks if c.check == "cell sizes")
    assert not cell.ok and f"{int((sizes['patients'] < 10).sum())} of {len(sizes)} rows" in cell.detail
    counted = disclosure.check("counts.csv", csv(sizes.rename(columns={"patients": "n"})), ctx)
    assert {"cell sizes", "small counts in 'n'"} <= failed(counted)
    assert "cell sizes" not in failed(disclosure.check("big.csv", csv(sizes[sizes["patients"] >= 10]), ctx))


def test_dominance_flags_a_total_that_one_or_two_people_make(tmp_path):
    from workbench.node.catalog import DatasetEntry
    from workbench.node.settings import DatasetConfig

    amounts = pd.DataFrame({"pid": [f"P{i:05d}" for i in range(40)], "group": ["a"] * 20 + ["b"] * 20,
                            "amount": [1_000_000.0] + [10.0] * 19 + [500.0] * 20})
    path = tmp_path / "amounts.parquet"
    amounts.to_parquet(path)
    config = DatasetConfig(path=path, columns={"pid": {"type": "id"},
                                               "group": {"type": "category", "categories": ["a", "b"]},
                                               "amount": {"type": "float", "bounds": [0, 2_000_000]}})
    ctx = disclosure.context(DatasetEntry("amounts", config, config.public_info("amounts", "v1")))
    totals = amounts.groupby("group")["amount"].sum().rename("total_amount").reset_index()
    dominance = [c for c in disclosure.check("totals.csv", csv(totals), ctx) if c.check.startswith("dominance")]
    assert len(dominance) == 1 and not dominance[0].ok
    assert dominance[0].detail.startswith("1 cells where 2 contributors make up more than 85%")
    only_b = totals[totals["group"] == "b"]
    assert all(c.ok for c in disclosure.check("b.csv", csv(only_b), ctx) if c.check.startswith("dominance"))


def test_row_level_outputs_are_flagged(ctx, rows):
    everything = failed(disclosure.check("rows.csv", csv(rows), ctx))
    assert {"row-level size", "identifiers", "copied rows"} <= everything
    sample = rows.drop(columns="patient_id").sample(50, random_state=2)
    assert "copied rows" in failed(disclosure.check("sample.csv", csv(sample), ctx))
    as_json = json.dumps(rows.head(20).to_dict(orient="records")).encode()
    assert {"identifiers", "copied rows"} <= failed(disclosure.check("rows.json", as_json, ctx))


def test_printed_rows_and_images_are_flagged(ctx, rows):
    printed = rows[["age", "bmi", "visits", "cost"]].head(25).to_string().encode()
    assert failed(disclosure.check("log.txt", printed, ctx)) == {"printed rows"}
    assert failed(disclosure.check("fine.txt", b"mean age 52.1 (95% CI 51.8 to 52.4)\n", ctx)) == set()
    assert failed(disclosure.check("plot.png", b"\x89PNG...", ctx)) == {"image"}
    notebook = {"cells": [{"cell_type": "code", "source": "print(df.head())",
                           "outputs": [{"output_type": "stream", "name": "stdout",
                                        "text": rows.head(3).to_string()}]}]}
    assert "identifiers" in failed(disclosure.check("executed.ipynb", json.dumps(notebook).encode(), ctx))


def test_the_smallest_cell_is_the_owners_setting_per_dataset(tmp_path, ctx, rows):
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    from .conftest import jobs_config

    table = rows.groupby(["diagnosis", "region", "sex"]).size().rename("patients").reset_index()
    assert table["patients"].min() >= 10 and (table["patients"] < 500).any()  # the premise, on the demo data
    assert "cell sizes" not in failed(disclosure.check("t.csv", csv(table), ctx))  # the default: 10
    service = NodeService(NodeConfig.load(jobs_config(tmp_path, {"min_cell_count": 500})), start_workers=False)
    try:
        strict = disclosure.context(service.catalog.get("patients"))
    finally:
        service.close()
    cell = next(c for c in disclosure.check("t.csv", csv(table), strict) if c.check == "cell sizes")
    assert not cell.ok and f"{int((table['patients'] < 500).sum())} of {len(table)} rows" in cell.detail
