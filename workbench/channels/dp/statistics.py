"""Several statistics in one release (``agg``) and noisy sufficient statistics (``moments``).

Each statistic becomes one or more OpenDP aggregates (its *measurements*) in
ONE Polars plan; OpenDP analyses the plan and its privacy map covers all of
them together. The helpers here build those aggregates from public metadata
and turn the noisy values into estimates and intervals (post-processing).

Measurements per statistic: count -> a length; sum -> a bounded sum; mean ->
sum and length; var and std -> length, sum of ``x - c`` and sum of
``(x - c)^2`` (``c`` the middle of the public bounds, ``(x - c)^2`` clipped to
``[0, h^2]``, ``h`` the half-width); quantile -> OpenDP's exponential
mechanism over public candidates. Moments over columns ``x_1..x_k``: with
``z_i = (x_i - c_i) / h_i`` clipped to [-1, 1], the length ``n``, every
``sum z_i`` and every ``sum z_i z_j`` (i <= j).

Interval rules (1 - alpha = 95%): a statistic built from m measurements
bounds each at alpha / m (union bound) and takes the extreme values of the
statistic over the product of those intervals (interval arithmetic), clipped
to what the public bounds allow. Quantiles: OpenDP's exponential mechanism
(no interval) here; under pure DP with public keys the engine reads them off a
noisy histogram instead, with an interval (:mod:`workbench.channels.dp.quantiles`).
"""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from workbench.intervals import mean_interval, ratio_interval
from workbench.protocol import DatasetInfo, DPQuery, Statistic

QUANTILE_CANDIDATES = 1_001
PARTS = {"count": ("n",), "sum": ("s",), "mean": ("s", "n"), "var": ("n", "s", "s2"), "std": ("n", "s", "s2"),
         "quantile": ("q",)}
PART_NAMES = {"n": "count", "s": "sum", "s2": "sum of squares", "q": "quantile"}


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


# ----------------------------------------------------------------- public-metadata helpers


def filled(col) -> pl.Expr:
    """A numeric column with nulls (and NaN) imputed to the middle of its public bounds."""
    lo, hi = col.bounds
    expr = pl.col(col.name)
    if col.type == "int":
        mid = int((lo + hi) // 2)
        return expr.fill_null(mid)
    mid = (lo + hi) / 2.0
    return expr.fill_nan(mid).fill_null(mid)


def summand(col) -> pl.Expr:
    """A numeric column as OpenDP's bounded sum takes it: nulls imputed to the middle of the public bounds.

    NaN (floats) is imputed by OpenDP's sum itself, to the same middle: OpenDP 0.16 inserts
    ``when(x.is_not_nan() | x.is_null()).then(x).otherwise(middle)`` before clipping (pinned by
    tests/channels/dp/test_opendp_pin.py). Our own ``fill_nan`` on top made the plan evaluate the column three
    times per row: ~25% of a group-by mean's CPU at 100M rows."""
    if col.type == "int":
        return filled(col)
    lo, hi = col.bounds
    return pl.col(col.name).fill_null((lo + hi) / 2.0)


def bounds(col) -> tuple:
    lo, hi = col.bounds
    return (int(math.ceil(lo)), int(math.floor(hi))) if col.type == "int" else (float(lo), float(hi))


def candidates(col) -> list:
    lo, hi = bounds(col)
    if col.type == "int" and hi - lo + 1 <= QUANTILE_CANDIDATES:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (QUANTILE_CANDIDATES - 1)
    values = [lo + i * step for i in range(QUANTILE_CANDIDATES)]
    return sorted({int(round(v)) for v in values}) if col.type == "int" else values


def shares(query: DPQuery) -> list[float]:
    """Each statistic's share of the release's epsilon: even, or proportional to ``weights``."""
    weights = query.weights or [1.0] * len(query.aggs)
    total = sum(weights)
    return [w / total for w in weights]


# ----------------------------------------------------------------- OpenDP aggregates


def _alias(statistic: str, part: str) -> str:
    return f"{statistic}__{part}"


def statistic_aggregates(info: DatasetInfo, s: Statistic, scale: dict[str, float] | None = None) -> list[pl.Expr]:
    """The OpenDP aggregates of one statistic (``scale``: explicit noise scales by alias, else global)."""
    dp = _opendp()
    scale = scale or {}

    def sc(part: str):
        return scale.get(_alias(s.name, part))

    if s.stat == "count":
        return [dp.len(scale=sc("n"), signed=True).alias(_alias(s.name, "n"))]
    col = info.column(s.column)
    x = filled(col)
    if s.stat == "quantile":
        return [x.dp.quantile(s.p, candidates(col), scale=sc("q")).alias(_alias(s.name, "q"))]
    if s.stat in ("sum", "mean"):
        out = [summand(col).dp.sum(bounds(col), scale=sc("s")).alias(_alias(s.name, "s"))]
        if s.stat == "mean":
            out.append(dp.len(scale=sc("n"), signed=True).alias(_alias(s.name, "n")))
        return out
    lo, hi = col.bounds
    c, h = (lo + hi) / 2.0, (hi - lo) / 2.0
    centred = x.cast(pl.Float64) - c
    return [dp.len(scale=sc("n"), signed=True).alias(_alias(s.name, "n")),
            centred.dp.sum((-h, h), scale=sc("s")).alias(_alias(s.name, "s")),
            (centred * centred).clip(0.0, h * h).dp.sum((0.0, h * h), scale=sc("s2")).alias(_alias(s.name, "s2"))]


def _standardised(info: DatasetInfo, name: str) -> pl.Expr:
    """``z = (x - c) / h`` in [-1, 1]: ``c`` and ``h`` the centre and half-width of the public bounds."""
    col = info.column(name)
    lo, hi = col.bounds
    c, h = (lo + hi) / 2.0, (hi - lo) / 2.0 or 1.0
    return ((filled(col).cast(pl.Float64) - c) / h).clip(-1.0, 1.0)


def moment_names(columns: list[str]) -> list[tuple[str, str | None, str | None]]:
    """(alias, first column, second column) of every moment: n, sums, products."""
    names = [("n", None, None)] + [(f"s__{a}", a, None) for a in columns]
    for i, a in enumerate(columns):
        for b in columns[i:]:
            names.append((f"p__{a}__{b}", a, b))
    return names


def moments_aggregates(info: DatasetInfo, columns: list[str]) -> list[pl.Expr]:
    """The aggregates of a moments query: the length, every ``sum z_i`` and every ``sum z_i z_j``."""
    dp = _opendp()
    z = {name: _standardised(info, name) for name in columns}
    aggs = [dp.len(signed=True).alias("n")]
    for alias, a, b in moment_names(columns)[1:]:
        if b is None:
            aggs.append(z[a].dp.sum((-1.0, 1.0)).alias(alias))
        else:
            lo = 0.0 if a == b else -1.0
            aggs.append((z[a] * z[b]).clip(lo, 1.0).dp.sum((lo, 1.0)).alias(alias))
    return aggs


# ----------------------------------------------------------------- post-processing into tables


def _statistic_row(s: Statistic, col, row: dict, acc) -> tuple[Any, Any, Any]:
    """(estimate, lower, upper) of one statistic from its noisy measurements (post-processing)."""
    m = len(PARTS[s.stat])

    def value(part: str) -> float | None:
        v = row.get(_alias(s.name, part))
        return None if v is None else float(v)

    def interval(part: str) -> tuple[float, float] | None:
        a, v = acc(_alias(s.name, part), m), value(part)
        return None if a is None or v is None else (v - a, v + a)

    if s.stat in ("count", "sum"):
        part = "n" if s.stat == "count" else "s"
        est, iv = value(part), interval(part)
        return est, None if iv is None else iv[0], None if iv is None else iv[1]
    if s.stat == "quantile":
        return value("q"), None, None
    lo, hi = col.bounds
    n, n_iv = value("n"), interval("n")
    if s.stat == "mean":
        s_iv = interval("s")
        return mean_interval(value("s"), n, None if s_iv is None else s_iv[1] - value("s"),
                             None if n_iv is None else n_iv[1] - n, (lo, hi))
    return spread(s.stat, n, value("s"), value("s2"), n_iv, interval("s"), interval("s2"), (hi - lo) / 2.0)


def spread(stat: str, n, s1, s2, n_iv, s1_iv, s2_iv, h: float):
    """Variance (or its square root) from the noisy length and the centred first and second sums."""
    top = h * h
    if not n or n <= 0 or s1 is None or s2 is None:
        return None, 0.0, (h if stat == "std" else top)
    m1, m2 = s1 / n, s2 / n
    est = min(max(m2 - m1 * m1, 0.0), top)
    lower, upper = 0.0, top
    if None not in (n_iv, s1_iv, s2_iv) and n_iv[0] > 0:
        m1_lo, m1_hi = ratio_interval(*s1_iv, *n_iv)
        m2_lo, m2_hi = ratio_interval(max(s2_iv[0], 0.0), max(s2_iv[1], 0.0), *n_iv)
        sq = sorted([m1_lo * m1_lo, m1_hi * m1_hi])
        sq_lo = 0.0 if m1_lo <= 0 <= m1_hi else sq[0]
        lower, upper = min(max(m2_lo - sq[1], 0.0), top), min(max(m2_hi - sq_lo, 0.0), top)
    if stat == "std":
        return math.sqrt(est), math.sqrt(lower), math.sqrt(upper)
    return est, lower, upper


def agg_table(info: DatasetInfo, query: DPQuery, by: list[str], frame: pl.DataFrame, acc, quantile=None) -> dict:
    """The long table ``[*by, statistic, estimate, lower, upper]``; ``acc(alias, m)`` is the half-width of a
    measurement at alpha / m; ``quantile(statistic, keys)`` the (estimate, lower, upper) of a quantile read
    off its histogram (None: OpenDP's exponential mechanism in the main plan, no interval)."""
    rows = []
    for row in frame.iter_rows(named=True):
        keys = [row[b] for b in by]
        for s in query.aggs:
            col = info.column(s.column) if s.column else None
            if s.stat == "quantile" and quantile is not None:
                rows.append([*keys, s.name, *quantile(s, tuple(keys))])
            else:
                rows.append([*keys, s.name, *_statistic_row(s, col, row, acc)])
    return {"columns": [*by, "statistic", "estimate", "lower", "upper"], "data": rows}


def moments_table(info: DatasetInfo, columns: list[str], frame: pl.DataFrame, noise: dict[str, tuple]) -> dict:
    """The noisy sufficient statistics with what a client needs to use them: each moment's estimate, its noise
    scale and distribution (public), and the public centre and half-width of each column (rows ``c__<column>``: estimate = centre, scale =
    half-width)."""
    row = frame.row(0, named=True)
    data = []
    for alias, a, b in moment_names(columns):
        scale, distribution = noise.get(alias, (None, None))
        data.append([alias, a, b, None if row[alias] is None else float(row[alias]), scale, distribution])
    for name in columns:  # the public centring z = (x - centre) / half_width, as rows of their own
        lo, hi = info.column(name).bounds
        data.append([f"c__{name}", name, None, (lo + hi) / 2.0, (hi - lo) / 2.0 or 1.0, "public"])
    return {"columns": ["moment", "first", "second", "estimate", "scale", "distribution"], "data": data}
