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

from workbench.errors import ComputationFailed, InvalidQuery


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


@dataclass(frozen=True)
class Thresholded:
    """OpenDP's Laplace mechanism with a threshold on a map of counts (key -> count), and its public parameters.

    Keys whose noisy count is below ``threshold`` are left out of the output (the mechanism does it, in OpenDP)."""

    measurement: Any
    accuracy: float
    scale: float
    threshold: int

    def __call__(self, counts: dict[str, int]) -> dict[str, int]:
        return dict(self.measurement({key: int(value) for key, value in counts.items()}))


def thresholded_counts(contributions: int, epsilon: float, delta: float, alpha: float) -> Thresholded:
    """Noise and a threshold for counts over a *private* key set, as the file path's OpenDP plan chooses them.

    Neighbours differ by one unit with at most ``k = contributions`` rows, so it touches at most ``k`` keys
    (l0), moves each count by at most ``k`` (l-inf) and all of them by at most ``k`` in total (l1):
    ``d_in = (k, k, k)`` for ``make_laplace_threshold`` (integer Laplace noise, then keys below the threshold
    dropped; Rogers 2023). The scale is the one that spends exactly epsilon, the threshold the smallest
    integer whose delta OpenDP bounds by the ``delta`` asked; OpenDP checks the pair at ``d_in``. These are
    the scale and threshold OpenDP's Polars plan picks for a count grouped by a private key on a file."""
    dp = _dp()
    domain = dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64"))
    metric = dp.l01inf_distance(dp.absolute_distance(T="i64"))
    k = max(int(contributions), 1)
    d_in, d_out = (k, k, k), (epsilon, delta)

    def make(scale: float, threshold: int):
        return dp.m.make_laplace_threshold(domain, metric, scale=scale, threshold=threshold)

    scale = make(1.0, 2 ** 30).map(d_in)[0] / epsilon  # epsilon is linear in 1/scale; the threshold sets delta
    for _ in range(8):
        if make(scale, 2 ** 30).map(d_in)[0] <= epsilon:
            break
        scale = scale * 1.000001 + 1e-12
    def fits(threshold: int) -> bool:  # (OpenDP's check raises on pairs it cannot order, e.g. less eps, more delta)
        spent = make(scale, threshold).map(d_in)
        return spent[0] <= epsilon and spent[1] <= delta

    if not fits(2 ** 30):
        raise InvalidQuery("This epsilon and delta are too small for a group-by over a private key set (no count "
                           "threshold fits); ask with more epsilon or delta.", code="bad_epsilon")
    lowest = k + 1  # OpenDP's map needs a threshold above the l-inf distance
    threshold = lowest if fits(lowest) else dp.binary_search(fits, bounds=(lowest, 2 ** 30), T=int)
    measurement = make(scale, threshold)
    if not measurement.check(d_in, d_out):  # never expected: OpenDP's own check is the last word
        raise ComputationFailed("No noise threshold meets the privacy loss asked.", code="computation_failed")
    return Thresholded(measurement, float(dp.discrete_laplacian_scale_to_accuracy(scale, alpha)), scale, threshold)
