"""Several statistics over a federation (``fed_ds.agg``, ``fed_ds.group_by(...).agg``), pooled from DP parts.

Every node answers the same questions through its own gate; the notebook
pools their noisy parts (post-processing). What each statistic is asked as:

* count, sum: themselves (they add);
* mean: its sum and count (the pooled mean is their ratio);
* var, std: a count, the sum of ``x - c`` and the sum of ``(x - c)^2`` (``c``, ``h``
  the centre and half-width of the public bounds; two derived columns clipped to
  ``[-h, h]`` and ``[0, h^2]``, nulls at ``c``), exactly the single-node parts;
* quantile: a noisy histogram of its column on the single-node public grid
  (:func:`workbench.channels.dp.quantiles.grid`; one histogram per column, its
  own release on each node), pooled bin by bin.

One price: the requested epsilon is split between the main release (counts,
sums and the parts above) and each quantile column's histogram, by the
statistics' weights (one share each by default); each part is its own release
on every node, all previewed before anything is charged, each charged through
that node's gate, and the node's charges add up to epsilon. Quantiles need
pure DP (public keys).

Intervals (alpha = 5%): each node's half-width of a part is rescaled from
alpha to alpha / (m k) (m parts of the statistic, k nodes; Laplace tails,
``a ln(mk/alpha) / ln(1/alpha)``) and the nodes' half-widths add (union
bound); the statistic's interval is the single-node interval arithmetic over
those pooled part intervals (:func:`workbench.intervals.mean_interval`,
:func:`workbench.channels.dp.statistics.spread`). A pooled quantile is read off
the summed bin counts; its band is the single-node one with the Laplace scale
``sqrt(sum_i b_i^2)`` of the summed noise (each node's ``b_i`` recovered from its
stated half-width as ``(a + 1) / ln(1 / alpha)``, rounded up for integer noise).

Privacy guarantee: per node, (epsilon, delta)-DP on that node's data (the
node's OpenDP releases at shares summing to epsilon, charged by its gate);
pooling is post-processing.
"""

from __future__ import annotations

import math

import pandas as pd

from workbench.channels.dp import quantiles
from workbench.channels.dp.federated import FederatedQuery, _rescale
from workbench.channels.dp.statistics import spread
from workbench.errors import ConnectionFailed, InvalidQuery, NotSupported
from workbench.intervals import mean_interval

SUPPORTED = ("count", "sum", "mean", "var", "std", "quantile")


class _Share:
    """One node's part of a federated question, asked at ``share`` of the epsilon (and tagged by ``role``)."""

    def __init__(self, query, share: float, role: tuple):
        self.query, self.share, self.role = query, share, role

    def _delta(self, delta: float) -> float:
        return delta if self.role[0] == "main" else 0.0

    def preview(self, epsilon: float, delta: float = 0.0):
        return self.query.preview(epsilon * self.share, self._delta(delta))

    def release(self, epsilon: float, delta: float = 0.0):
        frame = self.query.release(epsilon * self.share, self._delta(delta))
        frame.attrs["part"] = self.role
        return frame


class FederatedAgg(FederatedQuery):
    """Counts, sums, means, variances, standard deviations and quantiles over every node (one price)."""

    def __init__(self, fds, main, statistics: dict, parts: list[tuple], levels: dict[str, float]):
        super().__init__(fds, main if main is not None else parts[0][1], statistics=statistics)
        self.parts = parts  # (role, spec, share): ("main",) or ("histogram", column)
        self.quantile_levels = levels  # quantile statistic -> p

    def _queries(self, handles):
        from workbench.client.dataset import Query

        return [(h, _Share(Query(h, spec), share, role)) for h in handles for role, spec, share in self.parts]

    def _check_loss(self, delta: float) -> None:
        if delta > 0 and any(role[0] == "histogram" for role, _s, _w in self.parts):
            raise NotSupported("A federated quantile reads noisy histograms with public keys: it needs pure DP "
                               "(delta = 0).", code="not_supported")

    def preview(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False):
        self._check_loss(delta)
        return super().preview(epsilon, delta, allow_partial=allow_partial)

    def release(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False) -> pd.DataFrame:
        """Release every part on every node (each node charged ``epsilon`` in all) and pool them.

        Privacy guarantee: (epsilon, delta)-DP per node; pooling is post-processing (module docstring)."""
        self._check_loss(delta)
        out = super().release(epsilon, delta, allow_partial=allow_partial)
        out.attrs.update({"kind": "agg", "parts": [[*role, spec.model_dump(mode="json", exclude_none=True), share]
                                                   for role, spec, share in self.parts]})
        return out

    def _previews(self, epsilon: float, delta: float, allow_partial: bool) -> tuple[list, list[str]]:
        """Every part's preview on every node; a node missing one part is left out whole (allow_partial)."""
        done, missing = super()._previews(epsilon, delta, allow_partial)
        missing = list(dict.fromkeys(missing))
        return [d for d in done if d[0].node.url not in missing], missing

    def _combine(self, frames: list) -> pd.DataFrame:
        delivered = pd.Series([h.node.url for h, _p, _f in frames]).value_counts()
        frames = [t for t in frames if delivered[t[0].node.url] == len(self.parts)]  # only nodes with every part
        if not frames:
            raise ConnectionFailed("No node of the federation answered every part of the question.",
                                   details={"nodes": sorted(delivered.index)})
        alpha = float(frames[0][2].attrs.get("alpha", 0.05))
        main = [f for _h, _p, f in frames if f.attrs["part"][0] == "main"]
        k = len({h.node.url for h, _p, _f in frames})
        index = _pooled_parts(main, list(self.spec.by)) if main else {}
        histograms = {}
        for _h, _p, f in frames:
            if f.attrs["part"][0] == "histogram":
                histograms.setdefault(f.attrs["part"][1], []).append(f)
        return self._table(index, histograms, k, alpha)

    def _table(self, index: dict, histograms: dict, k: int, alpha: float) -> pd.DataFrame:
        from workbench.query.language import derived_schema

        by = list(self.spec.by)
        schema = derived_schema(self.fds.schema, self.fds.handles[0]._spec(kind="count"))[0]
        keys = {tuple(key[:-1]) for key in index} or {tuple(key[:-1]) for key in _histogram_keys(histograms, by)}
        rows = []
        for group in sorted(keys) if by else [()]:
            for name, (stat, column) in self.statistics.items():
                col = schema.column(column) if column else None
                if stat == "quantile":
                    p = self.quantile_levels[name]
                    rows.append([*group, name, *_pooled_quantile(histograms[column], by, group, col, p, alpha)])
                else:
                    rows.append([*group, name, *_pooled_statistic(index, group, name, stat, col, k, alpha)])
        return pd.DataFrame(rows, columns=[*by, "statistic", "estimate", "lower", "upper"])


def _pooled_parts(frames: list[pd.DataFrame], by: list[str]) -> dict:
    """(*group, part) -> (summed estimate, list of the nodes' half-widths at alpha)."""
    out: dict = {}
    for f in frames:
        for r in f.to_dict("records"):
            key = (*[r[b] for b in by], r["statistic"])
            est, halves = out.get(key, (0.0, []))
            out[key] = (est + float(r["estimate"]), halves + [float(r["upper"]) - float(r["estimate"])])
    return out


def _part_interval(index: dict, group: tuple, part: str, m: int, k: int, alpha: float) -> tuple[float, float]:
    """(pooled estimate, half-width at alpha / m over k nodes) of one part."""
    est, halves = index[(*group, part)]
    return est, sum(halves) * _rescale(alpha, m * k)


def _pooled_statistic(index: dict, group: tuple, name: str, stat: str, col, k: int, alpha: float):
    """(estimate, lower, upper) of a count, sum, mean, var or std from its pooled parts."""
    if stat in ("count", "sum"):
        est, half = _part_interval(index, group, name, 1, k, alpha)
        return est, est - half, est + half
    if stat == "mean":
        s, a_s = _part_interval(index, group, f"{name}__sum", 2, k, alpha)
        n, a_n = _part_interval(index, group, f"{name}__n", 2, k, alpha)
        return mean_interval(s, n, a_s, a_n, tuple(col.bounds))
    parts = [_part_interval(index, group, f"{name}__{p}", 3, k, alpha) for p in ("n", "s", "s2")]
    (n, a_n), (s1, a_1), (s2, a_2) = parts
    lo, hi = col.bounds
    return spread(stat, n, s1, s2, (n - a_n, n + a_n), (s1 - a_1, s1 + a_1), (s2 - a_2, s2 + a_2), (hi - lo) / 2.0)


def _histogram_keys(histograms: dict, by: list[str]) -> set:
    frames = [f for fs in histograms.values() for f in fs]
    return {(*[r[b] for b in by], None) for f in frames for r in f.to_dict("records")}


def _node_scale(half: float, alpha: float) -> float:
    """A node's Laplace scale from its stated (integer-noise) half-width at alpha, rounded up."""
    return (half + 1.0) / math.log(1 / alpha)


def _pooled_quantile(frames: list[pd.DataFrame], by: list[str], group: tuple, col, p: float, alpha: float):
    """(estimate, lower, upper) of the p-quantile from the nodes' histograms summed bin by bin."""
    edges, integer = quantiles.grid(col)
    counts = [0.0] * (len(edges) - 1)
    variance = 0.0
    for f in frames:
        rows = f[(f[by] == list(group)).all(axis=1)] if by else f
        rows = rows.sort_values("bin_lower")
        for j, value in enumerate(rows["estimate"].astype(float)):
            counts[j] += value
        variance += _node_scale(float((rows["upper"] - rows["estimate"]).max()), alpha) ** 2
    return quantiles.from_counts(counts, edges, integer, p, math.sqrt(variance), alpha)


def _centred(column: str, col) -> tuple[dict, str, str]:
    """Derived columns ``x - c`` in [-h, h] and ``(x - c)^2`` in [0, h^2] (nulls at c): a var's parts."""
    from workbench.client.expressions import col as c_

    lo, hi = col.bounds
    c, h = (lo + hi) / 2.0, (hi - lo) / 2.0
    first, second = f"wb_{column}_c1"[:64], f"wb_{column}_c2"[:64]
    x = c_(column) - c
    return {first: x.clip(-h, h).fill_null(0.0), second: (x * x).clip(0.0, h * h).fill_null(0.0)}, first, second


def federated_agg(fds, by: list[str], statistics: dict, weights=None) -> FederatedAgg:
    """Several statistics over every node; see the module docstring for what each node is asked."""
    from workbench.client.dataset import _agg_spec
    from workbench.client.expressions import Stat
    from workbench.query.language import derived_schema

    given = weights if isinstance(weights, dict) else dict(zip(statistics, weights or [1.0] * len(statistics)))
    schema = derived_schema(fds.schema, fds.handles[0]._spec(kind="count"))[0]
    parts, part_weights, derive, plan, levels, histogram_weight = {}, [], {}, {}, {}, {}
    for name, stat in statistics.items():
        if not isinstance(stat, Stat) or stat.stat not in SUPPORTED:
            raise NotSupported(f"A federated agg combines {', '.join(SUPPORTED)}; '{name}' is "
                               f"{getattr(stat, 'stat', stat)!r}.", code="not_supported")
        plan[name], weight = (stat.stat, stat.column), given.get(name, 1.0)
        if stat.stat == "quantile":
            levels[name] = stat.p
            histogram_weight[stat.column] = histogram_weight.get(stat.column, 0.0) + weight
        elif stat.stat == "mean":
            parts[f"{name}__sum"], parts[f"{name}__n"] = Stat("sum", stat.column), Stat("count")
            part_weights += [weight / 2] * 2
        elif stat.stat in ("var", "std"):
            col = _bounded(schema, stat.column, stat.stat)
            columns, first, second = _centred(stat.column, col)
            derive.update(columns)
            parts.update({f"{name}__n": Stat("count"), f"{name}__s": Stat("sum", first),
                          f"{name}__s2": Stat("sum", second)})
            part_weights += [weight / 3] * 3
        else:
            parts[name] = stat
            part_weights.append(weight)
    total = sum(given.get(name, 1.0) for name in statistics)
    out, main = [], None
    if parts:
        handle = fds.handles[0].with_columns(**dict(sorted(derive.items()))) if derive else fds.handles[0]
        main = handle._spec(by=list(by), **_agg_spec(parts, part_weights if weights is not None else None))
        out.append((("main",), main, 1.0 - sum(histogram_weight.values()) / total))
    for column, weight in histogram_weight.items():
        col = _bounded(schema, column, "quantile")
        edges, _ = quantiles.grid(col)
        filled = f"wb_{column}_q"[:64]  # nulls at the middle of the bounds, as on one node
        handle = fds.handles[0].with_columns(**{filled: _filled(column, col)})
        spec = handle._spec(kind="histogram", column=filled, bins=edges, by=list(by))
        out.append((("histogram", column), spec, weight / total))
    return FederatedAgg(fds, main, plan, out, levels)


def _filled(column: str, col):
    """``column`` with nulls at the middle of its public bounds (what the single-node statistics do)."""
    from workbench.client.expressions import col as c_

    lo, hi = col.bounds
    return c_(column).fill_null(int((lo + hi) // 2) if col.type == "int" else (lo + hi) / 2.0)


def _bounded(schema, column: str, what: str):
    col = schema.column(column)
    if col is None or col.type not in ("int", "float") or col.bounds is None:
        raise InvalidQuery(f"A federated {what} needs a numeric column with public bounds; '{column}' is not one "
                           "(clip a derived column).", code="bad_bounds")
    return col
