"""The two places Workbench uses OpenDP internals (pinned to 0.16.0) still find what they rely on.

``workbench.channels.dp.worker._resolve`` reads a query's private chain and loss to calibrate in one step, and
``workbench.channels.synth._calibration`` patches the ``dp.mbi`` search helpers. Both fall back to OpenDP's own
path on any surprise, so an upgrade would silently lose the speed-up; these tests make it loud.
"""

from __future__ import annotations

import importlib

import polars as pl
import pytest

dp = pytest.importorskip("opendp.prelude")


def test_opendp_is_the_pinned_version():
    from importlib.metadata import version

    assert version("opendp").startswith("0.16."), "re-check dp/engine._resolve and synth/_calibration, then re-pin"


def test_the_engine_resolves_a_measurement_opendp_accepts():
    """The fast calibration returns a measurement OpenDP itself checks at the query's (d_in, d_out)."""
    from workbench.channels.dp import worker as engine
    from workbench.protocol import ColumnInfo, DatasetInfo

    engine._opendp()
    info = DatasetInfo(name="t", tier="private", max_rows=1000,
                       columns=[ColumnInfo(name="age", type="int", bounds=(0, 120))])
    lf = pl.LazyFrame({"age": list(range(1, 101))}, schema={"age": pl.Int64})
    query = engine._query(lf, info, 0.5, 0.0).select(dp.len(signed=True))
    inner = object.__getattribute__(query, "_query")
    for name in ("_chain", "_d_in", "_d_out", "_output_measure"):
        assert hasattr(inner, name), name
    measurement = engine._resolve(query)
    assert measurement.check(inner._d_in, inner._d_out)
    assert measurement.map(inner._d_in) == pytest.approx(0.5, rel=1e-3)  # the fast path, not a looser search


def test_the_synthesis_patch_finds_its_targets():
    for module, names in {"opendp.extras.mbi._table": ["binary_search_param", "prior"],
                          "opendp.extras.mbi._mst": ["binary_search_chain", "prior", "_make_mst_scores"],
                          "opendp.extras.mbi._fixed": ["binary_search_chain"],
                          "opendp.extras.mbi._aim": ["binary_search_chain", "prior"],
                          "opendp.mod": ["binary_search_param"]}.items():
        loaded = importlib.import_module(module)
        for name in names:
            assert callable(getattr(loaded, name, None)), f"{module}.{name}"


def test_opendp_imputes_nan_to_the_middle_of_a_sums_bounds():
    """``statistics.summand`` leaves NaN to OpenDP's bounded sum, which imputes it to the middle of the bounds (the
    file path's imputation): an upgrade that changed this would change answers, and this test says so."""
    from workbench.channels.dp import statistics, worker as engine
    from workbench.protocol import ColumnInfo, DatasetInfo

    engine._opendp()
    col = ColumnInfo(name="x", type="float", bounds=(0.0, 10.0))
    info = DatasetInfo(name="t", tier="private", max_rows=1000, columns=[col])
    lf = pl.LazyFrame({"x": [1.0, float("nan"), None, 20.0, 2.0]}, schema={"x": pl.Float64})
    query = engine._query(lf, info, 1000.0, 0.0).select(statistics.summand(col).dp.sum((0.0, 10.0)).alias("sum"))
    released = query.release().collect()["sum"][0]
    assert released == pytest.approx(1.0 + 5.0 + 5.0 + 10.0 + 2.0, abs=0.5)
