"""Noise-aware choice of MST's pairs (worker processes only).

OpenDP's MST scores each candidate pair by how badly the current model estimates it, ``||exact - model||_1``,
and picks the spanning tree's edges by report-noisy-max on that score. The score ignores what measuring the pair
will cost in noise: a pair of two 16-bin columns has 256 cells, and at a few thousand rows its Laplace noise
(``scale`` per cell) adds up to more than the whole table, so the fitted pair came out worse than not measuring
it (bank customers, 4,000 rows: age x tenure 0.22-0.25 TVD when chosen, 0.16 when left to the model). Private-PGM's
AIM subtracts the expected noise of a candidate from its score; this does the same for MST:

    score(pair) = ||exact - model||_1 - scale * cells(pair)

(``scale * cells`` is the expected L1 norm of the Laplace noise the pair would be measured with). A pair is then
chosen for its signal above its own noise: at tens of thousands of rows the strong 256-cell pairs still win, at a
few thousand the tree connects a column through a pair with fewer cells.

Privacy is unchanged: the penalty is a constant computed from public values (the domain's cell counts, the
epsilon and the privacy unit), so each score's sensitivity (OpenDP's stability map) is the same, and OpenDP still
builds, calibrates and runs every measurement. Pinned to OpenDP 0.16.0's private ``_make_mst_scores`` in
``opendp.extras.mbi._mst`` (tests/channels/dp/test_opendp_pin.py fails if an upgrade moves it).
"""

from __future__ import annotations

from typing import Any

_PENALTY = {"per_cell": 0.0}


def expected_noise_per_cell(epsilon_pairs: float, pairs: int, contributions: int) -> float:
    """The Laplace scale of each measured pair (``contributions`` rows per unit, ``epsilon_pairs`` split evenly
    over ``pairs``): the expected absolute noise in one cell."""
    return contributions * pairs / epsilon_pairs if epsilon_pairs > 0 and pairs > 0 else 0.0


def install(per_cell: float) -> None:
    """Make MST's selection score subtract ``per_cell`` times a pair's cell count (call before the release)."""
    import opendp.extras.mbi._mst as mst

    _PENALTY["per_cell"] = float(per_cell)
    if getattr(mst._make_mst_scores, "noise_aware", False):
        return
    original = mst._make_mst_scores

    def scores(input_domain: Any, input_metric: Any, queries: list, model: Any) -> Any:
        from opendp._internal import _make_transformation

        exact_scores = original(input_domain, input_metric, queries, model)
        penalty = [_PENALTY["per_cell"] * float(model.domain.size(q)) for q in queries]
        shift = _make_transformation(
            *exact_scores.output_space, *exact_scores.output_space,
            function=lambda values: [v - p for v, p in zip(values, penalty)],
            stability_map=lambda d_in: d_in)      # a constant shift: every score's sensitivity is unchanged
        return exact_scores >> shift

    scores.noise_aware = True  # type: ignore[attr-defined]
    mst._make_mst_scores = scores
