"""OpenDP mechanisms for the per-group aggregates a pushed-down query returns.

Only public parameters (the sensitivity, epsilon, delta, the vector's
length) choose a mechanism and its scale; the data only meets the chosen
measurement. Every mechanism is built with OpenDP's public constructors
and checked by OpenDP at the sensitivity the caller states
(``measurement.check(d_in, d_out)``); see :mod:`workbench.channels.dp.pushdown.run`
for why each statistic has the sensitivity it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def _dp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


@dataclass(frozen=True)
class Noise:
    """A measurement on an integer vector and its public accuracy (half-width of the 1-alpha interval)."""

    measurement: Any
    accuracy: float
    mechanism: str
    scale: float = 0.0  # the noise scale in integer units (public)

    def __call__(self, values: list[int]) -> list[int]:
        return list(self.measurement([int(v) for v in values]))


def integer_vector(length: int, sensitivity: int, epsilon: float, delta: float, alpha: float) -> Noise:
    """Noise for a vector of integers whose L1 and L2 distance between neighbours are both at most ``sensitivity``.

    Pure DP (delta = 0): the discrete Laplace mechanism (``make_laplace`` on ``i64``), epsilon-DP.
    Approximate DP (delta > 0): the same, or the discrete Gaussian (``make_gaussian``, zCDP converted to
    (epsilon, delta) by OpenDP), whichever gives the narrower interval at these public parameters."""
    dp = _dp()
    domain = dp.vector_domain(dp.atom_domain(T="i64"), size=length)
    sensitivity = max(int(sensitivity), 1)

    def laplace(scale):
        return dp.m.make_laplace(domain, dp.l1_distance(T="i64"), scale=scale)

    scale = _scale(laplace, sensitivity / epsilon, sensitivity, epsilon)
    best = Noise(laplace(scale), float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha)), "laplace", scale)
    if delta > 0:
        def gaussian(scale):
            zcdp = dp.m.make_gaussian(domain, dp.l2_distance(T="i64"), scale=scale)
            return dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(zcdp), delta)

        scale = dp.binary_search_param(gaussian, d_in=sensitivity, d_out=(epsilon, delta), T=float)
        accuracy = float(dp.discrete_gaussian_scale_to_accuracy(scale, alpha))
        if accuracy < best.accuracy:
            best = Noise(gaussian(scale), accuracy, "gaussian", scale)
    return best


def _scale(make, scale: float, d_in, d_out) -> float:
    """``scale`` if OpenDP confirms ``make(scale)`` meets ``d_out`` at ``d_in``; else OpenDP's own search."""
    if make(scale).check(d_in, d_out):
        return scale
    return _dp().binary_search_param(make, d_in=d_in, d_out=d_out, T=float)
