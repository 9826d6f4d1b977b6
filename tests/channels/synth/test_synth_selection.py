"""MST chooses a pair for its error over all its cells, above the noise it would be measured with (issue 20,
:mod:`workbench.channels.synth.selection`): at a few hundred rows a weakly tied pair of two 16-bin columns (256
cells) is left to the model and the tree connects through a small pair; at tens of thousands of rows the same
tie is worth measuring and is chosen (OpenDP 0.16's own score, a matrix norm, chose ``c x d`` or ``b x c``
there). Real fits in worker processes, as the node runs them."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workbench.channels.synth.wire import SynthSpec

pytestmark = pytest.mark.slow

COLUMNS = {
    "a": {"type": "float", "bounds": [0.0, 16.0]},
    "b": {"type": "float", "bounds": [0.0, 16.0]},
    "c": {"type": "bool"},
    "d": {"type": "bool"},
}


def _rows(rows: int, seed: int) -> pl.DataFrame:
    """``c`` is ``a``'s upper half, ``d`` is ``b``'s; ``b`` copies ``a`` for one row in five (a weak tie spread
    over 256 cells), otherwise the columns are independent and uniform."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0, 16, rows)
    b = np.where(rng.random(rows) < 0.2, a, rng.uniform(0, 16, rows))
    return pl.DataFrame({"a": a, "b": b, "c": a > 8, "d": b > 8})


def _measured_pairs(tmp_path, rows: int) -> set[tuple[str, ...]]:
    from workbench.node.settings import DatasetConfig
    from workbench.channels.synth.prepare import run_isolated

    path = tmp_path / f"ties-{rows}.parquet"
    _rows(rows, 5).write_parquet(path)
    info = DatasetConfig(path=path, columns=COLUMNS, max_rows=2 * rows).public_info("ties", "v1")
    out = run_isolated("synth.fit", {"info": info.model_dump(mode="json"), "path": str(path), "format": "parquet",
                                     "spec": SynthSpec(method="mst", rows=200).model_dump(mode="json"),
                                     "epsilon": 1.0, "progress_path": None, "jax_cache": None}, timeout_s=600)
    return {tuple(m["columns"]) for m in out["report"]["marginals"] if len(m["columns"]) == 2}


def test_mst_leaves_a_weak_many_celled_pair_to_the_model_at_few_rows_and_measures_it_at_many(tmp_path):
    # at 500 rows the a x b tie (~100 rows off independence) is far below the Laplace noise of 256 cells
    # (~1,400 rows at epsilon 1); without the noise penalty OpenDP's score (error of the one-way model, which
    # itself is noisiest on 256 cells) ranks a x b first
    for _ in range(2):
        small = _measured_pairs(tmp_path, 500)
        assert ("a", "c") in small and ("b", "d") in small, small
        assert ("a", "b") not in small, small
    # at 40,000 rows the same tie (L1 error ~15,000 rows) is well above the noise: chosen
    assert ("a", "b") in _measured_pairs(tmp_path, 40_000)


def test_pair_score_is_the_error_over_every_cell_net_of_the_noise():
    from workbench.channels.synth.selection import expected_noise_per_cell, pair_score

    exact = np.zeros((16, 16))
    np.fill_diagonal(exact, 10.0)
    model = np.full((16, 16), 160.0 / 256)
    error = np.abs(exact - model).sum()
    assert error > 5 * np.abs(exact - model).sum(axis=0).max()     # what a matrix norm would have scored
    assert pair_score(exact, model, 0.0) == pytest.approx(error)
    assert pair_score(exact, model, 0.5) == pytest.approx(error - 0.5 * 256)
    # epsilon 0.54 over 7 pairs, one row per person: Laplace scale 12.96 (the stddev OpenDP reports is sqrt(2) x)
    assert expected_noise_per_cell(0.54, 7, 1) == pytest.approx(12.96, rel=1e-3)
