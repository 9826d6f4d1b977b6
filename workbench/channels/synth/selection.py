"""MST's choice of pairs, scored on the whole table and net of the noise a pair would be measured with (worker
processes only).

OpenDP 0.16's MST scores each candidate pair by how badly the current model estimates it and picks the spanning
tree's edges by report-noisy-max on that score. Two things are wrong with its score for our data:

* **It is not the L1 error.** ``np.linalg.norm(exact - model, 1)`` on a 2-D table is the *matrix* 1-norm (the
  largest column sum), not the sum over cells: a 16 x 16 pair scored about 1/16 of its error and a 16 x 3 pair
  about 1/2, so MST preferred pairs with few cells in their second column whatever the data said (two 16-bin
  columns of 40,000 rows, equal in one row of five: scored 980 for an L1 error of 14,700, and two boolean
  pairs were chosen instead; OpenDP's AIM flattens the table first). Here the score is the sum over cells.
* **It ignores the pair's own noise.** A pair of two 16-bin columns has 256 cells; at a few thousand rows its
  Laplace noise adds up to more than the table, and the fitted pair came out worse than the model's guess
  without it. As Private-PGM's AIM does, the score subtracts the expected L1 norm of that noise,
  ``scale * cells`` (``scale``: the Laplace scale each chosen pair is measured with). A pair is chosen for its
  error above its own noise: at tens of thousands of rows the strong 256-cell pairs still win, at a few
  thousand a column is joined through a pair with fewer cells.

Privacy is unchanged: each score is ``||exact - model||_1`` minus a constant computed from public values (cell
counts, epsilon, the privacy unit), so one person changes it by at most the L1 change of the exact table, the
stability OpenDP's score transformation declares (``max`` of the marginals' distances); OpenDP still builds,
calibrates and runs the noisy max and every measurement. Pinned to OpenDP 0.16.0's private ``_make_mst_scores``
in ``opendp.extras.mbi._mst`` (tests/channels/dp/test_opendp_pin.py fails if an upgrade moves it).
"""

from __future__ import annotations

from typing import Any

import numpy as np

_PENALTY = {"per_cell": 0.0}


def expected_noise_per_cell(epsilon_pairs: float, pairs: int, contributions: int) -> float:
    """The Laplace scale of each measured pair (``contributions`` rows per unit, ``epsilon_pairs`` split evenly
    over ``pairs``): the expected absolute noise in one cell."""
    return contributions * pairs / epsilon_pairs if epsilon_pairs > 0 and pairs > 0 else 0.0


def pair_score(exact: np.ndarray, estimate: np.ndarray, per_cell: float) -> float:
    """The L1 error of ``estimate`` over all cells of the pair, minus the expected L1 norm of its noise."""
    return float(np.abs(np.asarray(exact, dtype=float) - np.asarray(estimate, dtype=float)).sum()
                 - per_cell * np.size(exact))


def _scores(input_domain: Any, input_metric: Any, queries: list, model: Any) -> Any:
    """OpenDP's ``_make_mst_scores`` (same domains, metrics and stability map) with :func:`pair_score`."""
    from opendp._internal import _make_transformation
    from opendp.domains import atom_domain, vector_domain
    from opendp.extras.mbi._utilities import TypedDictDistance, TypedDictDomain
    from opendp.extras.numpy import NPArrayDDomain
    from opendp.metrics import linf_distance

    for value_domain in input_domain.cast(TypedDictDomain).values():
        value_domain.cast(NPArrayDDomain)
    input_metric.cast(TypedDictDistance)
    per_cell = _PENALTY["per_cell"]
    return _make_transformation(
        input_domain=input_domain,
        input_metric=input_metric,
        output_domain=vector_domain(atom_domain(T="f64", nan=False)),
        output_metric=linf_distance(T="f64", monotonic=False),
        function=lambda exact: [pair_score(exact[q], model.project(q).values, per_cell) for q in queries],
        stability_map=lambda d_in: max(d_in.values()),
    )


def install(per_cell: float) -> None:
    """Make MST score pairs with :func:`pair_score` at ``per_cell`` (call before the release)."""
    import opendp.extras.mbi._mst as mst

    _PENALTY["per_cell"] = float(per_cell)
    mst._make_mst_scores = _scores
