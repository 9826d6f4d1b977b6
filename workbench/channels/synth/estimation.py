"""The loss the worker's mirror-descent estimator minimises, built without mbi's JAX power iteration.

``mbi.estimation.mirror_descent`` given a list of measurements builds the L2 loss with
``marginal_loss.from_linear_measurements(..., domain=...)``, which estimates the Lipschitz constant of the
loss's gradient (it only sets the first step size; a line search adapts it afterwards) by 50 steps of JAX
power iteration: compiling those programs was a third of an MST fit (12 s of 42 s in our profile).

For identity measurements (full marginals, all that MST, AIM and Fixed release when every column has public
keys or cuts) the constant is known in closed form. The loss is
``sum_M ||P_M x_C - y_M||^2 / (2 sigma_M^2)`` where ``P_M`` sums the cells of the maximal clique ``C`` that
carries measurement ``M`` down to ``M``'s cells. ``P_M^T P_M`` has the constant vector as top eigenvector with
eigenvalue ``|C| / |M|`` (cells), so the Hessian's largest eigenvalue is
``max_C sum_{M on C} |C| / (|M| sigma_M^2)`` -- the value mbi's power iteration (started from the constant
vector) converges to. Any other query falls back to mbi's own code.

This only changes how the estimator is set up, not what it estimates: same loss, same total, same
optimiser. It reads DP measurements only (post-processing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _parent(clique: tuple[str, ...], maximal: list[tuple[str, ...]]) -> tuple[str, ...]:
    """The first maximal clique containing ``clique`` (the one ``CliqueVector.project`` uses)."""
    for candidate in maximal:
        if set(clique) <= set(candidate):
            return candidate
    raise ValueError(f"no maximal clique supports {clique}")


def identity_lipschitz(domain: Any, measurements: list) -> float | None:
    """Largest eigenvalue of the L2 loss's Hessian for identity measurements; None for any other query."""
    from mbi import Factor
    from mbi.clique_utils import maximal_subset

    if not measurements or any(m.query != Factor.datavector for m in measurements):
        return None
    maximal = maximal_subset([tuple(m.clique) for m in measurements])
    per_clique: dict[tuple[str, ...], float] = {}
    for m in measurements:
        clique = tuple(m.clique)
        parent = _parent(clique, maximal)
        ratio = domain.size(parent) / domain.size(clique)
        per_clique[parent] = per_clique.get(parent, 0.0) + ratio / max(float(m.stddev), 1e-12) ** 2
    value = max(per_clique.values())
    return value if math.isfinite(value) and value > 0 else None


def l2_loss(domain: Any, measurements: list) -> tuple[Any, float]:
    """``(MarginalLossFn, known_total)`` for ``mirror_descent``: mbi's own loss and total estimate, with the
    Lipschitz constant in closed form when every measurement is an identity query."""
    from mbi import marginal_loss
    from mbi.estimation import minimum_variance_unbiased_total

    lipschitz = identity_lipschitz(domain, measurements)
    total = float(minimum_variance_unbiased_total(measurements))
    if lipschitz is None:
        return marginal_loss.from_linear_measurements(measurements, domain=domain), total
    loss = marginal_loss.from_linear_measurements(measurements)   # domain=None: no power iteration
    return marginal_loss.MarginalLossFn(loss.cliques, loss.loss_fn, float(lipschitz)), total


def check_against_power_iteration(domain: Any, measurements: list) -> tuple[float, float]:
    """(closed form, mbi's power-iteration estimate): for tests."""
    from mbi import marginal_loss
    from mbi.clique_utils import maximal_subset

    loss = marginal_loss.from_linear_measurements(measurements)
    maximal = maximal_subset([tuple(m.clique) for m in measurements])
    estimate = float(np.asarray(marginal_loss.calculate_l2_lipschitz(domain, maximal, loss.loss_fn)))
    return float(identity_lipschitz(domain, measurements) or 0.0), estimate


def _simplex_projection(values: np.ndarray, total: float) -> np.ndarray:
    """The Euclidean projection of ``values`` onto ``{x >= 0, sum(x) = total}`` (sort-based)."""
    v = np.asarray(values, dtype=np.float64)
    u = np.sort(v)[::-1]
    cumulative = np.cumsum(u) - total
    k = np.arange(1, len(u) + 1)
    rho = int(np.nonzero(u - cumulative / k > 0)[0][-1])
    return np.maximum(v - cumulative[rho] / (rho + 1), 0.0)


def only_oneway(measurements: list) -> bool:
    """Whether every measurement is a full one-way marginal (or the total): :func:`oneway_model` applies."""
    from mbi import Factor

    return bool(measurements) and all(m.query == Factor.datavector and len(tuple(m.clique)) <= 1
                                       for m in measurements)


def oneway_model(domain: Any, measurements: list, *, potentials: Any = None) -> Any:
    """The L2 estimate of a model whose measurements are all one-way marginals, in closed form.

    Such a model's columns are independent, so mbi's loss separates per column:
    ``sum_M ||x_c - y_M||^2 / (2 sigma_M^2)`` over distributions ``x_c`` with the estimated total. Its
    minimiser is the inverse-variance mean of the column's measurements projected onto the scaled simplex
    -- the point mirror descent converges to, without compiling JAX programs. A column nobody measured is
    uniform. Reads DP measurements only (post-processing). ``potentials`` (a warm start) is not needed.
    """
    from mbi import CliqueVector, Factor, MarkovRandomField
    from mbi.estimation import minimum_variance_unbiased_total

    total = float(minimum_variance_unbiased_total(measurements))
    sums: dict[str, np.ndarray] = {}
    weights: dict[str, float] = {}
    for m in measurements:
        clique = tuple(m.clique)
        if not clique:
            continue
        w = 1.0 / max(float(m.stddev), 1e-12) ** 2
        sums[clique[0]] = sums.get(clique[0], 0.0) + w * np.asarray(m.noisy_measurement, dtype=np.float64)
        weights[clique[0]] = weights.get(clique[0], 0.0) + w
    cliques = [(a,) for a in domain.attrs]
    marginals, logs = {}, {}
    for (a,) in cliques:
        size = domain[a]
        fitted = (_simplex_projection(sums[a] / weights[a], total) if a in sums
                  else np.full(size, total / size))
        # a floor of 1e-3 rows keeps every cell reachable when the model is a warm start for a later fit
        probs = np.maximum(fitted, 1e-3) / np.maximum(fitted, 1e-3).sum()
        logs[(a,)] = Factor(domain.project((a,)), np.log(probs))   # NumPy values: nothing for JAX to compile
        marginals[(a,)] = Factor(domain.project((a,)), probs * total)
    return MarkovRandomField(potentials=CliqueVector(domain, cliques, logs),
                             marginals=CliqueVector(domain, cliques, marginals), total=total)
