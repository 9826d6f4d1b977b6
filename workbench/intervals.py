"""Intervals for ratios of noisy estimates: post-processing of released values, no data.

The DP engine (a mean from a noisy sum and count), federated DP (pooled means)
and encrypted evaluation (a mean loss) all bound a ratio the same way: if the
numerator lies in ``[n_lo, n_hi]`` and the denominator in ``[d_lo, d_hi]`` with
``d_lo > 0``, the ratio lies between the smallest and largest of the four
corner ratios.
"""

from __future__ import annotations

__all__ = ["mean_interval", "ratio_interval"]


def ratio_interval(n_lo: float, n_hi: float, d_lo: float, d_hi: float) -> tuple[float, float]:
    """The range of ``n / d`` over the box (``0 < d_lo <= d_hi``)."""
    corners = [n_lo / d_lo, n_lo / d_hi, n_hi / d_lo, n_hi / d_hi]
    return min(corners), max(corners)


def mean_interval(s: float | None, c: float | None, a_s: float | None, a_c: float | None,
                  bounds: tuple[float, float]) -> tuple[float | None, float, float]:
    """A mean and its interval from a noisy sum ``s`` and count ``c``, their public accuracies (half-widths)
    and the column's public bounds (a mean always lies within them)."""
    lo, hi = bounds
    if c is None or s is None or not c > 0:
        return None, float(lo), float(hi)
    estimate = min(max(s / c, lo), hi)
    if a_s is None or a_c is None or c - a_c <= 0:
        return estimate, float(lo), float(hi)
    low, high = ratio_interval(s - a_s, s + a_s, c - a_c, c + a_c)
    return estimate, max(low, lo), min(high, hi)
