"""Federated DP queries: one :class:`DPQuery` asked of every node, combined in the kernel.

Each node answers the same spec through its own gate and charges its own
ledger; the kernel combines the per-node releases only (post-processing), so
the combined answer costs nothing more. Per node, the privacy loss is the
requested (epsilon, delta) on that node's data; since the nodes hold disjoint
people (one hospital each), the union is protected at the same (epsilon, delta)
by parallel composition. If one person can appear at several nodes, their loss
adds up across those nodes.

How intervals combine (every node's half-width is OpenDP's ``1 - alpha`` bound
for its statistic, at alpha = 0.05):

* counts and sums add; the combined half-width is the sum of the nodes'
  half-widths, each rescaled from ``alpha`` to ``alpha / k`` assuming Laplace
  tails (``a * ln(k/alpha) / ln(1/alpha)``) and joined by a union bound. The
  rescaling is exact for Laplace noise and conservative for Gaussian noise.
* means: the noisy sum of a node is ``estimate * noisy_count``; the pooled
  mean is ``sum of noisy sums / sum of noisy counts``; its interval takes the
  extreme ratios of the combined sum and count intervals (each at ``alpha/2``),
  clipped to the column's public bounds.
* quantiles: a federated histogram over the column's public bounds (100
  equal-width bins, summed over nodes) inverted with linear interpolation in
  the bin. Its interval is approximate: the CDF's noise is bounded with a
  normal approximation of the summed bin noises.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from workbench.client.dataset import RemoteDataset
from workbench.client.federation import FederatedDataset
from workbench.client.handles import register
from workbench.client.results import as_released
from workbench.errors import BudgetExceeded, ConnectionFailed, InvalidQuery, NotSupported, WorkbenchError
from workbench.intervals import mean_interval
from workbench.protocol import DPQuery


VALUE_COLUMNS = ("estimate", "lower", "upper", "noisy_count")
QUANTILE_BINS = 100


def _rescale(alpha: float, k: int) -> float:
    """Factor taking a Laplace half-width at ``alpha`` to one at ``alpha / k``."""
    return math.log(k / alpha) / math.log(1 / alpha) if k > 1 else 1.0


@dataclass
class FederatedPreview:
    """Per-node prices and errors, and the combined 95% half-width where it is additive."""

    epsilon: float
    delta: float
    nodes: pd.DataFrame
    accuracy: pd.DataFrame
    missing_nodes: list[str]

    def __repr__(self) -> str:
        acc = ", ".join(f"{r.statistic} ±{r.accuracy:.4g}" if r.accuracy is not None and not pd.isna(r.accuracy)
                        else f"{r.statistic} ±?" for r in self.accuracy.itertuples())
        missing = f"; missing {self.missing_nodes}" if self.missing_nodes else ""
        return (f"<FederatedPreview over {len(self.nodes['node'].unique())} nodes: epsilon={self.epsilon:g} "
                f"charged on each node; combined 95% error {acc}{missing}>")


class FederatedQuery:
    """A DP question asked of every node of a federated dataset: preview, then release."""

    def __init__(self, fds: "FederatedDataset", spec: DPQuery, quantile: float | None = None,
                 statistics: dict[str, tuple[str, str | None]] | None = None):
        self.fds = fds
        self.spec = spec  # what each node answers (a histogram for a federated quantile)
        self.quantile = quantile
        self.statistics = statistics  # a federated agg: name -> (stat, column), means asked as sum and count

    def _queries(self, handles: list["RemoteDataset"]):
        from workbench.client.dataset import Query

        return [(h, Query(h, self.spec)) for h in handles]

    def _previews(self, epsilon: float, delta: float, allow_partial: bool) -> tuple[list, list[str]]:
        """Every node's preview (it also proves the node is up and the question valid); nothing is spent."""
        done, missing = [], []
        for h, q in self._queries(self.fds.handles):
            try:
                done.append((h, q, q.preview(epsilon, delta)))
            except ConnectionFailed as exc:
                if not allow_partial:
                    raise ConnectionFailed(f"Node {h.node.url} is unreachable, so nothing was asked or charged on any "
                                           f"node ({exc.message}). Pass allow_partial=True to go on without it.",
                                           details={"node": h.node.url}) from None
                missing.append(h.node.url)
        if not done:
            raise ConnectionFailed("No node of the federation answered.", details={"nodes": missing})
        return done, missing

    def preview(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False) -> FederatedPreview:
        """The price on each node and the expected error of the combined answer. Spends nothing."""
        previews, missing = self._previews(epsilon, delta, allow_partial)
        rows = []
        for h, _q, p in previews:
            for a in p.body.accuracy:
                rows.append({"node": h.node.url, "statistic": a.statistic, "accuracy": a.accuracy, "alpha": a.alpha,
                             "would_replay": p.would_replay,
                             "epsilon_left_after": None if p.body.budget_left_after is None
                             else p.body.budget_left_after.epsilon})
        nodes = pd.DataFrame(rows)
        k = len(previews)
        combined = []
        for stat, group in nodes.groupby("statistic", sort=False):
            accs = group["accuracy"].tolist()
            alpha = float(group["alpha"].iloc[0])
            total = None if any(a is None or pd.isna(a) for a in accs) else sum(accs) * _rescale(alpha, k)
            combined.append({"statistic": stat, "accuracy": total, "alpha": alpha})
        return FederatedPreview(epsilon, delta, nodes, pd.DataFrame(combined), missing)

    def release(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False) -> pd.DataFrame:
        """Release on every node (each charges ``epsilon`` to your grant there) and combine.

        Every node is previewed first: if one is unreachable or would refuse for
        lack of budget, nothing is charged anywhere (unless ``allow_partial``,
        which leaves unreachable nodes out and names them in
        ``df.attrs["missing_nodes"]``).

        Privacy guarantee: (epsilon, delta)-DP per node (OpenDP at each node);
        the combination is post-processing of the per-node releases.
        """
        previews, missing = self._previews(epsilon, delta, allow_partial)
        for h, _q, p in previews:
            left = p.body.budget_left_before
            if left is not None and not p.would_replay and left.epsilon < epsilon - 1e-12:
                raise BudgetExceeded(f"Your grant on {h.node.url} has epsilon {left.epsilon:g} left, less than "
                                     f"{epsilon:g}; nothing was charged on any node.", code="budget_exceeded",
                                     details={"node": h.node.url})
        frames, used, charged = [], [], []
        for h, q, p in previews:
            try:
                frame = q.release(epsilon, delta)
            except ConnectionFailed as exc:
                if not allow_partial:
                    raise ConnectionFailed(f"Node {h.node.url} went away during the release ({exc.message}); "
                                           f"already charged: {charged or 'none'}. Asking again replays their "
                                           "answers for free.", details={"node": h.node.url, "charged": charged}
                                           ) from None
                missing.append(h.node.url)
                continue
            except WorkbenchError as exc:
                if charged:
                    exc.message += f" (node {h.node.url}; already charged: {charged}; asking again replays theirs)"
                    exc.args = (exc.message,)
                raise
            frames.append((h, p, frame))
            used.append(h.node.url)
            charged.append(h.node.url)
        if not frames:
            raise ConnectionFailed("No node of the federation answered.", details={"nodes": missing})
        combined = self._combine(frames)
        combined.attrs.update({
            "dataset": self.fds.name, "kind": "quantile" if self.quantile is not None else self.spec.kind,
            "query": self.spec.model_dump(mode="json", exclude_none=True), "epsilon": epsilon, "delta": delta,
            "nodes": used, "missing_nodes": missing, "alpha": float(frames[0][2].attrs.get("alpha", 0.05)),
            "per_node": [{"node": h.node.url, "release_id": f.attrs["release_id"],
                          "epsilon_charged": f.attrs["epsilon_charged"], "delta_charged": f.attrs["delta_charged"],
                          "replayed": f.attrs["replayed"]} for h, _p, f in frames],
            "replayed": all(f.attrs["replayed"] for _h, _p, f in frames),
            "epsilon_charged": _charged_by_node(frames),
        })
        return as_released(combined)

    # ---------------------------------------------------------------- combination (post-processing only)

    def _combine(self, frames: list) -> pd.DataFrame:
        k = len(frames)
        alpha = float(frames[0][2].attrs.get("alpha", 0.05))
        keys = [c for c in frames[0][2].columns if c not in VALUE_COLUMNS]
        if self.quantile is not None:
            return self._quantile(frames, keys, alpha)
        if self.spec.kind == "mean":
            return self._mean(frames, keys, alpha)
        if self.spec.kind not in ("count", "sum", "histogram"):
            raise NotSupported(f"Federated {self.spec.kind} is not supported.", code="not_supported")
        parts = []
        for h, _p, f in frames:
            part = f[keys + ["estimate"]].copy()
            part["half"] = f["upper"] - f["estimate"]
            parts.append(part)
        stacked = pd.concat(parts, ignore_index=True)
        factor = _rescale(alpha, k)
        if keys:
            out = stacked.groupby(keys, sort=True, dropna=False).agg(
                estimate=("estimate", "sum"), half=("half", lambda s: s.sum(min_count=len(s))),
                nodes_reporting=("estimate", "size")).reset_index()
        else:
            out = pd.DataFrame({"estimate": [stacked["estimate"].sum()],
                                "half": [stacked["half"].sum(min_count=len(stacked))],
                                "nodes_reporting": [len(stacked)]})
        out["lower"] = out["estimate"] - out["half"] * factor
        out["upper"] = out["estimate"] + out["half"] * factor
        cols = keys + ["estimate", "lower", "upper"] + (["nodes_reporting"] if keys else [])
        return out[cols]

    def _mean(self, frames: list, keys: list[str], alpha: float) -> pd.DataFrame:
        from workbench.query.language import derived_schema

        col = derived_schema(self.fds.schema, self.spec)[0].column(self.spec.column)
        lo, hi = col.bounds
        k = len(frames)
        parts = []
        for h, p, f in frames:
            acc = {a.statistic: a.accuracy for a in p.body.accuracy}
            stat_alpha = p.body.accuracy[0].alpha if p.body.accuracy else alpha / 2
            part = f[keys].copy()
            part["noisy_sum"] = f["estimate"].astype(float) * f["noisy_count"].astype(float)
            part["noisy_count"] = f["noisy_count"].astype(float)
            part["a_sum"] = acc.get("sum")
            part["a_count"] = acc.get("count")
            part["stat_alpha"] = stat_alpha
            parts.append(part)
        stacked = pd.concat(parts, ignore_index=True)
        factor = _rescale(float(stacked["stat_alpha"].iloc[0]), k)
        grouped = stacked.groupby(keys, sort=True, dropna=False) if keys else [((), stacked)]
        rows = []
        for key, g in grouped:
            s, c = g["noisy_sum"].sum(), g["noisy_count"].sum()
            a_s = None if g["a_sum"].isna().any() else g["a_sum"].sum() * factor
            a_c = None if g["a_count"].isna().any() else g["a_count"].sum() * factor
            est, lower, upper = mean_interval(s, c, a_s, a_c, (lo, hi))
            key = key if isinstance(key, tuple) else (key,)
            rows.append(list(key) + [est, lower, upper, c, len(g)])
        out = pd.DataFrame(rows, columns=keys + ["estimate", "lower", "upper", "noisy_count", "nodes_reporting"])
        return out if keys else out.drop(columns=["nodes_reporting"])

    def _quantile(self, frames: list, keys: list[str], alpha: float) -> pd.DataFrame:
        col = self.fds.schema.column(self.spec.column)
        lo, hi = col.bounds
        bins = self.spec.bins
        edges = np.linspace(lo, hi, bins + 1)
        counts = np.zeros(bins)
        var = np.zeros(bins)
        z_alpha = math.log(1 / alpha)
        for _h, _p, f in frames:
            # Rows come sorted by their label text ("[10, 11)" before "[2, 3)"): order them by lower edge.
            f = f.assign(_lo=[float(str(b)[1:].split(",")[0]) for b in f["bin"]]).sort_values("_lo")
            counts += np.clip(f["estimate"].to_numpy(dtype=float), 0, None)
            half = (f["upper"] - f["estimate"]).to_numpy(dtype=float)
            var += 2 * (half / z_alpha) ** 2  # Laplace variance from its alpha half-width
        total = counts.sum()
        if total <= 0:
            return pd.DataFrame({"estimate": [None], "lower": [float(lo)], "upper": [float(hi)]})
        cdf = np.cumsum(counts) / total
        sd = np.sqrt(np.cumsum(var)) / total
        band = float(1.96 * sd.max())

        def invert(target: float) -> float:
            target = min(max(target, 0.0), 1.0)
            i = int(np.searchsorted(cdf, target, side="left"))
            i = min(i, bins - 1)
            before = cdf[i - 1] if i > 0 else 0.0
            width = cdf[i] - before
            frac = 0.0 if width <= 0 else (target - before) / width
            return float(edges[i] + frac * (edges[i + 1] - edges[i]))

        q = self.quantile
        return pd.DataFrame({"estimate": [invert(q)], "lower": [invert(q - band)], "upper": [invert(q + band)]})


def _charged_by_node(frames: list) -> dict[str, float]:
    """What each node charged in all (a question asked as several parts charges each)."""
    out: dict[str, float] = {}
    for h, _p, f in frames:
        out[h.node.url] = out.get(h.node.url, 0.0) + f.attrs["epsilon_charged"]
    return out


# ---------------------------------------------------------------- builders used by FederatedDataset


def federated_query(fds: "FederatedDataset", **spec) -> FederatedQuery:
    """The question every node answers, with the handles' filter and derived columns (checked here)."""
    return FederatedQuery(fds, fds.handles[0]._spec(**spec))


def federated_quantile(fds: "FederatedDataset", column: str, p: float, by: list[str] | None = None) -> FederatedQuery:
    if by:
        raise NotSupported("A federated quantile per group is not supported; use a federated histogram per group.",
                           code="not_supported")
    if not 0 < p < 1:
        raise InvalidQuery("The quantile must be in (0, 1).", code="invalid_query")
    col = fds.schema.column(column)
    if col is None:
        raise InvalidQuery(f"Unknown column '{column}'.", code="unknown_column")
    if col.type not in ("int", "float") or col.bounds is None:
        raise InvalidQuery(f"Column '{column}' needs to be numeric with public bounds.", code="wrong_type")
    return FederatedQuery(fds, fds.handles[0]._spec(kind="histogram", column=column, bins=QUANTILE_BINS), quantile=p)


class FederatedGroupBy:
    """Aggregates per group over every node; build with ``FederatedDataset.group_by``."""

    def __init__(self, fds: "FederatedDataset", by: list[str]):
        self.fds, self.by = fds, by

    def count(self) -> FederatedQuery:
        return federated_query(self.fds, kind="count", by=self.by)

    def sum(self, column: str) -> FederatedQuery:
        return federated_query(self.fds, kind="sum", column=column, by=self.by)

    def mean(self, column: str) -> FederatedQuery:
        return federated_query(self.fds, kind="mean", column=column, by=self.by)

    def agg(self, weights=None, **statistics) -> FederatedQuery:
        """Counts, sums, means, var, std and quantiles per group over every node, at one price per node."""
        from workbench.channels.dp.federated_agg import federated_agg

        return federated_agg(self.fds, self.by, statistics, weights)

# ---------------------------------------------------------------- the handle's methods


class FederatedDPMethods:
    """:class:`~workbench.FederatedDataset` methods of federated DP (registered on import)."""

    def count(self):
        """Rows over every node: a federated query (``.preview(epsilon)``, ``.release(epsilon)``)."""
        return federated_query(self, kind="count")

    def sum(self, column: str):
        """Sum of a column over every node (values clipped to the public bounds)."""
        return federated_query(self, kind="sum", column=column)

    def mean(self, column: str):
        """Pooled mean: summed noisy sums over summed noisy counts."""
        return federated_query(self, kind="mean", column=column)

    def quantile(self, column: str, p: float):
        """Pooled ``p``-quantile, read off a federated histogram over the public bounds."""
        return federated_quantile(self, column, p)

    def median(self, column: str):
        return self.quantile(column, 0.5)

    def histogram(self, column: str, bins: int | list[float] | None = None):
        """Counts per bin or category, summed over every node."""
        return federated_query(self, kind="histogram", column=column, bins=bins)

    def agg(self, weights=None, **statistics):
        """Counts, sums, means, var, std and quantiles over every node at one price per node, e.g.
        ``fed.dataset("patients").filter(col("age") >= 65).agg(n=wb.count(), cost=wb.mean("cost"))``
        (see :mod:`workbench.channels.dp.federated_agg`)."""
        from workbench.channels.dp.federated_agg import federated_agg

        return federated_agg(self, [], statistics, weights)

    def corr(self, columns: list[str]):
        """The correlation matrix over every node, from pooled noisy moments (each node's own DP release, or
        ``.release(epsilon, protocol="he")`` for one secure-aggregation session); see
        :mod:`workbench.channels.dp.federated_moments`."""
        from workbench.channels.dp.federated_moments import federated_moments

        return federated_moments(self, list(columns), "corr")

    def cov(self, columns: list[str]):
        """The covariance matrix over every node, from pooled noisy moments (as :meth:`corr`)."""
        from workbench.channels.dp.federated_moments import federated_moments

        return federated_moments(self, list(columns), "cov")

    def linear_regression(self, y: str, x: list[str] | str, epsilon: float | None = None, **options):
        """OLS of ``y`` on ``x`` over every node, as on one node: ``.release(epsilon)`` gives coefficients, SEs
        including the DP noise and 95% intervals (``protocol="he"``/``"smpc"`` pools by secure aggregation).

        The older call with ``epsilon`` (``linear_regression(y, x, epsilon=0.5, protocol=...)``) still runs the
        secure-aggregation regression at once and returns its own table (``coef``, ``std_err``, ...); see
        :func:`workbench.channels.secagg.kernel.linear_regression`."""
        xs = [x] if isinstance(x, str) else list(x)
        if epsilon is not None:
            from workbench.channels.secagg.kernel import linear_regression as secure_linear_regression

            self._whole("linear_regression")
            return secure_linear_regression(self, y, xs, epsilon, **options)
        if options:
            raise InvalidQuery(f"linear_regression(...) takes {sorted(options)} in .release(...) (or with "
                               "epsilon=, the secure-aggregation call).", code="invalid_query")
        from workbench.channels.dp.federated_moments import federated_moments

        return federated_moments(self, [*xs, y], "ols", y=y, x=xs)

    def group_by(self, *columns: str):
        """Counts, sums, means (and, in ``agg``, var, std and quantiles) per group over every node."""
        if not columns:
            raise InvalidQuery("group_by needs at least one column.", code="invalid_query")
        return FederatedGroupBy(self, list(columns))


register(FederatedDataset, FederatedDPMethods)
