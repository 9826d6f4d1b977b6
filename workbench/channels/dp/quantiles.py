"""Quantiles with intervals, read off a noisy histogram released in the same OpenDP composition.

In a several-statistics release under pure DP with public keys (and for the
legacy ``quantile`` kind under the same conditions, at the whole epsilon), the
quantiles of one column share ONE noisy histogram: counts per group and per
bin of a public grid over the column's bounds (one bin per integer value
when an integer column spans at most ``MAX_BINS`` values, else ``MAX_BINS``
equal-width bins). It is a separate OpenDP measurement, composed with the
main query by OpenDP (``make_composition``), so one release still has one
price, split by the statistics' shares.

Post-processing, per group: with noisy bin counts ``c_1..c_B`` (Laplace scale
``b`` each, public), cumulative sums ``F_j`` and ``G_j = F_j - p F_B``, the
p-quantile (the least value ``v`` with ``#(x <= v) >= p n``) lies in the first
bin where the true ``G_j >= 0``. The noise of ``G_j`` is ``S_j - p S_B`` with
``S_j`` a sum of j Laplace draws; by Levy's maximal inequality and the tail of
a sum of Laplace draws (Chan, Shi and Song 2011, Lemma 2.8),
``P(max_j |S_j| >= L) <= 4 exp(-L^2 / (8 B b^2)) = alpha`` for
``L = b sqrt(8 B ln(4 / alpha))`` (valid while ``ln(4/alpha) < B``). So with
probability at least ``1 - alpha`` every ``|noise of G_j| <= (1 + p) L``, and the
interval runs from the first bin where ``G_j + (1 + p) L >= 0`` to the first
where ``G_j - (1 + p) L >= 0``. The estimate is the first bin where the
noisy ``G_j >= 0`` (interpolated inside a real-valued bin). The bound is
stated for continuous Laplace noise; OpenDP's integer counts use discrete
Laplace noise of the same scale, whose tails are comparable.
"""

from __future__ import annotations

import math

import polars as pl

MAX_BINS = 128


def grid(col) -> tuple[list[float], bool]:
    """(edges, one bin per integer value) of a column's public histogram grid."""
    lo, hi = col.bounds
    if col.type == "int":
        lo_i, hi_i = math.ceil(lo), math.floor(hi)
        if hi_i - lo_i + 1 <= MAX_BINS:
            return [float(v) for v in range(lo_i, hi_i + 2)], True
    width = (hi - lo) / MAX_BINS
    return [lo + i * width for i in range(MAX_BINS)] + [float(hi)], False


def bin_index(expr: pl.Expr, edges: list[float]) -> pl.Expr:
    """The 0-based bin of a value (clipped to the grid first); bins are left-closed, the last closed too."""
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    width = (hi - lo) / n
    if all(abs(e - (lo + i * width)) <= 1e-9 * max(1.0, abs(e)) for i, e in enumerate(edges)):
        return ((expr.cast(pl.Float64).clip(lo, hi) - lo) // width).clip(0, n - 1).cast(pl.Int64)
    index = pl.lit(0, dtype=pl.Int64)  # uneven edges: the number of inner edges at or below the value
    for edge in edges[1:-1]:
        index = index + (expr >= edge).cast(pl.Int64)
    return index


def band(scale: float, bins: int, p: float, alpha: float) -> float:
    """The simultaneous half-width of every ``G_j`` at level ``1 - alpha`` (see the module docstring)."""
    return (1 + p) * scale * math.sqrt(8 * bins * math.log(4 / alpha))


def from_counts(counts: list[float], edges: list[float], integer: bool, p: float, scale: float,
                alpha: float) -> tuple[float | None, float, float]:
    """(estimate, lower, upper) of the p-quantile from noisy bin counts (post-processing)."""
    total = sum(counts)
    lo, hi = edges[0], edges[-1] - (1 if integer else 0)
    if total <= 0:
        return None, lo, hi
    width = band(scale, len(counts), p, alpha)
    cumulative, running = [], 0.0
    for c in counts:
        running += c
        cumulative.append(running - p * total)

    def first(shift: float) -> int | None:
        return next((j for j, g in enumerate(cumulative) if g + shift >= 0), None)

    j_est, j_lo, j_hi = first(0.0), first(width), first(-width)
    lower = lo if j_lo is None else edges[j_lo]
    if integer:
        upper = hi if j_hi is None else edges[j_hi]
        estimate = None if j_est is None else edges[j_est]
        return estimate, lower, upper
    upper = hi if j_hi is None else edges[j_hi + 1]
    if j_est is None:
        return None, lower, upper
    before = cumulative[j_est - 1] if j_est > 0 else -p * total
    step = cumulative[j_est] - before
    frac = 0.0 if step <= 0 else min(max(-before / step, 0.0), 1.0)
    return edges[j_est] + frac * (edges[j_est + 1] - edges[j_est]), lower, upper
