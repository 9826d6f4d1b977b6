"""Compile a :class:`~workbench.protocol.DPQuery` to OpenDP's Polars API and run it.

Runs inside a worker process (see :mod:`workbench.node.worker`), so a native
abort in OpenDP or Polars cannot take the node down. Only public metadata
(column types, bounds, categories, ``max_rows``, the privacy unit) shapes the
query; the data file is touched only by ``release``.

Privacy guarantee: ``release`` returns the output of one OpenDP measurement
whose privacy map, checked by OpenDP at ``d_in = max_contributions`` (the
node verified that no identifier exceeds it), is at most the requested
``(epsilon, delta)``. Everything the result carries besides the noisy values
(intervals, bins, keys) is computed from public metadata and the noisy values
only (post-processing). ``preview`` touches no data.
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from typing import Any

import polars as pl

from workbench.errors import InvalidQuery
from workbench.intervals import mean_interval
from workbench.node.data import POLARS_TYPES, check_stamp, scan
from workbench.query import language
from workbench.query.validate import bin_labels as _bin_labels, histogram_bins as _histogram_bins, validate
from workbench.channels.dp import quantiles
from workbench.channels.dp import statistics
from workbench.channels.dp.columnar import CODE_TYPE, coded_columns, columnar_frame, schema_frame
from workbench.channels.dp.statistics import bounds as _bounds, candidates as _candidates, filled as _filled
from workbench.protocol import DatasetInfo, DPQuery

def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


# ----------------------------------------------------------------- compilation


def _needed(info: DatasetInfo, query: DPQuery) -> list[str]:
    """The dataset's columns a query reads (a count reads the narrowest one): OpenDP's plans decode every
    column they are given, e.g. a million identifier strings for a plain count."""
    used = [n for n in [query.column, *query.by, *(query.columns or []), *(s.column for s in query.aggs or [])]
            if n]
    names = language.source_columns(info, query, used)
    if not names:
        narrow = [c.name for c in info.columns if c.type in ("bool", "int", "float")] or [info.columns[0].name]
        names = narrow[:1]
    return names


class _Plan:
    """The pieces of one compiled query: derived columns, filter, group keys, aggregates, how to read the result.

    ``coded``: columns stored as codes into their public category list (see :mod:`workbench.channels.dp.columnar`);
    their keys are codes and the released table is decoded back to labels (post-processing).
    ``scales``: explicit noise scales per aggregate (a several-statistics release split by shares);
    ``only``: build the aggregates of these statistics only (to price each one alone).
    ``histograms``: quantiles come from a noisy histogram per column (:mod:`workbench.channels.dp.quantiles`), a
    measurement of its own (:meth:`histogram`), instead of OpenDP's exponential mechanism in this plan.
    """

    def __init__(self, base: DatasetInfo, query: DPQuery, coded: dict[str, list] | None = None,
                 scales: dict[str, float] | None = None, only: list[str] | None = None, histograms: bool = False):
        info, env = language.derived_schema(base, query)
        codes = language.Codes(coded) if coded else None
        self.info, self.query = info, query
        self.by = list(query.by)
        self.derived = language.derived_columns(query, env, codes)
        self.where = language.to_polars(query.where, env, codes) if query.where is not None else None
        self.with_columns: list[pl.Expr] = []
        self.keys: pl.DataFrame | None = None
        self.labels: dict[str, list] = {}  # key column -> labels of its codes 0..n-1
        self.edges: list[float] | None = None  # a numeric histogram's public bin edges
        col = info.column(query.column) if query.column else None
        self.bounds = tuple(col.bounds) if col is not None and col.bounds else (0.0, 0.0)
        self.histograms: dict[str, tuple[list[float], bool]] = {}
        if histograms and query.kind == "quantile":  # the legacy kind: its column's histogram alone
            self.histograms = {col.name: quantiles.grid(col)}
        if histograms and query.kind == "agg":
            self.histograms = {q.column: quantiles.grid(info.column(q.column)) for q in query.aggs
                               if q.stat == "quantile"}
            only = [q.name for q in query.aggs if q.stat != "quantile" and (only is None or q.name in only)]
        self.aggs = [] if self.histograms and query.kind == "quantile" else self._aggregates(info, query, col, scales,
                                                                                               only)
        self.public_keys = self._keys(info, env, coded or {})

    def _aggregates(self, info: DatasetInfo, query: DPQuery, col, scales, only) -> list[pl.Expr]:
        dp = _opendp()
        kind = query.kind
        if kind == "agg":
            return [a for s in query.aggs if only is None or s.name in only
                    for a in statistics.statistic_aggregates(info, s, scales)]
        if kind == "moments":
            return statistics.moments_aggregates(info, query.columns)
        if kind == "histogram":
            edges = _histogram_bins(col, query.bins)
            if edges is None:
                self.by.append(col.name)
            else:
                lo, hi = edges[0], edges[-1]
                expr = pl.col(col.name)
                expr = expr.fill_nan(lo) if col.type == "float" else expr
                expr = expr.fill_null(lo).cast(pl.Float64).clip(lo, hi)
                self.with_columns.append(_bin_index(expr, edges).alias("bin"))
                self.by.append("bin")
                self.labels["bin"] = _bin_labels(edges)
                self.edges = edges
        if kind in ("count", "histogram"):
            return [dp.len(signed=True).alias("count")]
        if kind == "sum":
            return [statistics.summand(col).dp.sum(_bounds(col)).alias("sum")]
        if kind == "mean":
            return [statistics.summand(col).dp.sum(_bounds(col)).alias("sum"), dp.len(signed=True).alias("count")]
        return [_filled(col).dp.quantile(query.quantile, _candidates(col)).alias("quantile")]

    def _keys(self, info: DatasetInfo, env: dict, coded: dict[str, list]) -> bool:
        """Build the public key frame of a group-by; False when a key set is private."""
        key_columns: dict[str, list] = {}
        key_types: dict[str, Any] = {}
        private = False
        for name in self.by:
            if name == "bin":
                key_columns[name], key_types[name] = list(range(len(self.labels["bin"]))), pl.Int64
                continue
            column = info.column(name)
            if column.categories is None:
                private = True  # the other keys' codes are still decoded to their labels
                continue
            if name in coded:
                self.labels[name] = list(coded[name])
                key_columns[name], key_types[name] = list(range(len(coded[name]))), CODE_TYPE
            else:  # a cut's labels join as Categorical (String keys fail to join)
                key_columns[name] = list(column.categories)
                key_types[name] = pl.Categorical if env[name].cut else POLARS_TYPES[column.type]
        if private:
            return False
        if self.by:
            product = list(itertools.product(*key_columns.values()))
            self.keys = pl.DataFrame(
                {n: pl.Series(n, [row[i] for row in product], dtype=key_types[n]) for i, n in enumerate(key_columns)})
        return True

    def _rows(self, frame):
        """The derived columns, then the filter."""
        if self.derived:
            frame = frame.with_columns(self.derived)
        return frame.filter(self.where) if self.where is not None else frame

    def histogram(self, frame, column: str):
        """The noisy count per group and per bin of ``column``'s public grid (a quantile's histogram)."""
        dp = _opendp()
        edges, _ = self.histograms[column]
        col = self.info.column(column)
        frame = self._rows(frame).with_columns(quantiles.bin_index(_filled(col), edges).alias("__bin"))
        bins = pl.DataFrame({"__bin": pl.Series("__bin", list(range(len(edges) - 1)), dtype=pl.Int64)})
        keys = bins if self.keys is None else self.keys.join(bins, how="cross")
        return frame.group_by([*self.by, "__bin"]).agg(dp.len(signed=True).alias("count")).with_keys(keys)

    def lazy(self, frame):
        frame = self._rows(frame)
        if self.with_columns:
            frame = frame.with_columns(self.with_columns)
        if self.by:
            frame = frame.group_by(self.by).agg(self.aggs)
            if self.keys is not None:
                frame = frame.with_keys(self.keys)
            return frame
        return frame.select(self.aggs)


def _bin_index(expr: pl.Expr, edges: list[float]) -> pl.Expr:
    """The 0-based bin of a value already clipped to [edges[0], edges[-1]]; bins are left-closed, the last
    one closed on both sides. Integer arithmetic on the value (a string label per row cost ~10x more)."""
    n = len(edges) - 1
    lo, hi = edges[0], edges[-1]
    width = (hi - lo) / n
    if all(abs(e - (lo + i * width)) <= 1e-9 * max(1.0, abs(e)) for i, e in enumerate(edges)):
        return ((expr - lo) // width).clip(0, n - 1).cast(pl.Int64)
    # Uneven edges: the number of inner edges at or below the value.
    index = pl.lit(0, dtype=pl.Int64)
    for edge in edges[1:-1]:
        index = index + (expr >= edge).cast(pl.Int64)
    return index


# ----------------------------------------------------------------- calibration with a per-shape cache

#: cache_key -> (measurement, d_in, d_out, accuracy summary): everything a release of that shape needs but data.
_CALIBRATED: "OrderedDict[str, tuple]" = OrderedDict()
_CACHE_SIZE = 512


def _query(lf, info: DatasetInfo, epsilon: float, delta: float):
    """An OpenDP query on ``lf`` at the privacy unit, priced at exactly (epsilon, delta).

    The context is a privacy filter over a fully adaptive compositor with the same loss, queried once at
    that loss: the query's (d_in, d_out) are those of ``split_evenly_over=1``, whose constructor
    binary-searched its split (~75 % of a first release's time).
    """
    dp = _opendp()
    # max_rows is public: it bounds every group's length too.
    margins = [dp.polars.Margin(by=[], max_length=info.max_rows)]
    loss = dp.loss_of(epsilon=epsilon, delta=delta) if delta > 0 else dp.loss_of(epsilon=epsilon)
    context = dp.Context.compositor(
        data=lf,
        privacy_unit=dp.unit_of(contributions=info.privacy_unit.max_contributions),
        privacy_loss=loss,
        margins=margins,
    )
    return context.query(epsilon=epsilon, **({"delta": delta} if delta > 0 else {}))


def _resolve(query):
    """An OpenDP measurement for ``query`` that OpenDP itself checks meets its (d_in, d_out).

    OpenDP's own ``resolve`` binary-searches the noise scale (~30 privacy-map
    evaluations). Under pure DP the Laplace map is linear in 1/scale, so one
    evaluation at scale 1 gives the scale; the result is re-checked by OpenDP,
    and falls back to OpenDP's search if the check fails. :func:`run` caches
    the result per query shape (dataset version + spec + loss).

    Pinned to OpenDP 0.16.0 (pyproject pins ``opendp[polars]==0.16.0``): OpenDP has no public accessor for a
    query's input domain, metric and (d_in, d_out), so this reads the private ``_query``, ``_chain``,
    ``_d_in``, ``_d_out`` and ``_output_measure``. Safe by construction (OpenDP re-checks every measurement
    it returns, and any surprise falls back to the public ``query.resolve()``); tests/channels/dp/test_opendp_pin.py fails
    if an upgrade removes them, so the fast path cannot vanish silently.
    """
    dp = _opendp()
    inner = object.__getattribute__(query, "_query")
    plan = object.__getattribute__(query, "polars_plan")
    input_domain, input_metric = inner._chain
    d_in, d_out = inner._d_in, inner._d_out

    def make(scale):
        return dp.m.make_private_lazyframe(input_domain=input_domain, input_metric=input_metric,
                                           output_measure=inner._output_measure, lazyframe=plan, global_scale=scale)

    measurement = None
    if getattr(inner._output_measure.type, "origin", None) != "Approximate":
        try:
            eps_at_one = make(1.0).map(d_in)
            scale = eps_at_one / d_out if eps_at_one > 0 else 0.0
            for _ in range(8):
                candidate = make(scale)
                if candidate.check(d_in, d_out):
                    measurement = candidate
                    break
                scale = scale * 1.000001 + 1e-12
        except Exception:  # noqa: BLE001 - any surprise falls back to OpenDP's own search
            measurement = None
    if measurement is None:
        measurement = query.resolve()
    return measurement


# ----------------------------------------------------------------- entry point (worker side)


def run(task: dict) -> dict:
    """Preview or release one DP query. ``task`` is plain data built by the node."""
    _opendp()  # imports OpenDP with its contrib features enabled
    info = DatasetInfo.model_validate(task["info"])
    query = language.canonical(DPQuery.model_validate(task["query"]))  # unused derived columns dropped
    epsilon, delta, alpha = float(task["epsilon"]), float(task["delta"]), float(task["alpha"])
    validate(info, query, delta)
    columnar = task.get("columnar")  # a folder for this node's columnar copies (see workbench.channels.dp.columnar)
    coded = coded_columns(info) if columnar else None
    plan = _Plan(info, query, coded, histograms=delta == 0)
    if not plan.public_keys and delta <= 0:
        raise InvalidQuery("Private group keys need delta > 0.", code="needs_delta")
    lf = _frame(task, info, query)
    # A statistic built from m measurements bounds each at alpha/m (union bound).
    alphas = sorted({alpha / len(statistics.PARTS[s.stat]) for s in query.aggs} if query.kind == "agg"
                    else {alpha / 2 if query.kind == "mean" else alpha})
    hit = _CALIBRATED.get(task["cache_key"])
    if hit is not None and hit[0].check(hit[1], hit[2]):
        # Same shape seen before: reuse the measurement, which OpenDP has just re-checked at (d_in, d_out).
        _CALIBRATED.move_to_end(task["cache_key"])
        calibrated, _d_in, _d_out, summaries = hit
    else:
        calibrated, d_in, d_out = _calibrate(plan, lf, info, query, coded, epsilon, delta)
        summaries = {a: calibrated.summary(a) for a in alphas}
        _CALIBRATED[task["cache_key"]] = (calibrated, d_in, d_out, summaries)
        if len(_CALIBRATED) > _CACHE_SIZE:
            _CALIBRATED.popitem(last=False)
    summary = summaries[alphas[-1]]
    accuracy = _agg_accuracy(query, summaries, alpha) if query.kind == "agg" else _accuracy_rows(summary, alphas[-1])
    if query.kind == "quantile" and plan.histograms:  # the same row as the exponential mechanism's: no closed form
        accuracy = [{"statistic": "quantile", "accuracy": None, "alpha": alpha}]
    note = _note(query, plan, summary)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": note}
    frame, histograms = calibrated.release(lf)
    table = _result_table(query, plan, frame, summaries, alpha, (calibrated, histograms))
    return {"accuracy": accuracy, "table": table, "note": note}


class _Calibrated:
    """One release's OpenDP measurement: the main plan's, composed by OpenDP with the quantile histograms'."""

    def __init__(self, main, histograms: list[tuple[str, Any]] = ()):
        dp = _opendp()
        self.main, self.histograms = main, list(histograms)
        self.parts = ([main] if main is not None else []) + [m for _, m in self.histograms]
        self.measurement = self.parts[0] if len(self.parts) == 1 else dp.c.make_composition(self.parts)

    def check(self, d_in, d_out) -> bool:
        return self.measurement.check(d_in, d_out)

    def summary(self, alpha: float) -> pl.DataFrame:
        from opendp.accuracy import summarize_polars_measurement

        if self.main is None:
            return pl.DataFrame({"column": [], "accuracy": []}, schema={"column": pl.String, "accuracy": pl.Float64})
        return summarize_polars_measurement(self.main, alpha)

    def scale(self, column: str) -> float:
        """The Laplace scale of a quantile histogram's counts (public)."""
        from opendp.accuracy import summarize_polars_measurement

        measurement = dict(self.histograms)[column]
        return float(summarize_polars_measurement(measurement)["scale"][0])

    def release(self, lf) -> tuple[pl.DataFrame | None, dict[str, pl.DataFrame]]:
        """Run the measurement on the data: (main frame, histogram frame per column).

        Each part runs on its own: a non-adaptive composition's output is exactly its parts' outputs on
        the same data (OpenDP's composed OnceFrames crash when collected in 0.16), and the composition
        OpenDP checked at (d_in, d_out) bounds their total loss."""
        frames = [part(lf).collect() for part in self.parts]
        main = frames.pop(0) if self.main is not None else None
        return main, {column: frame for (column, _), frame in zip(self.histograms, frames)}


def _frame(task: dict, info: DatasetInfo, query: DPQuery):
    """The data to query (a release) or a frame of the same schema (a preview reads no data)."""
    columnar, needed = task.get("columnar"), _needed(info, query)
    if task["mode"] == "release":
        check_stamp(task["path"], task.get("stamp"))
        consent = task.get("consent")  # the data subjects' say: rows without consent never reach OpenDP
        return (columnar_frame(columnar, task["path"], task["format"], info, needed, consent) if columnar
                else scan(task["path"], task["format"], info, needed, consent))
    return schema_frame(info, needed) if columnar else scan(task["path"], task["format"], info, needed)


def _calibrate(plan: _Plan, lf, info: DatasetInfo, query: DPQuery, coded, epsilon: float, delta: float):
    """(calibrated, d_in, d_out): the plan's OpenDP measurement at exactly (epsilon, delta)."""
    context = _query(lf, info, epsilon, delta)
    dp_query = plan.lazy(context) if plan.aggs else plan.histogram(context, next(iter(plan.histograms)))
    inner = object.__getattribute__(dp_query, "_query")
    calibrated = None
    if query.kind == "agg" and delta == 0:
        calibrated = _shared(dp_query, context, info, query, coded, epsilon, plan)
    if calibrated is None and query.kind == "quantile" and plan.histograms:  # the legacy kind, pure DP
        calibrated = _Calibrated(None, [(query.column, _resolve(dp_query))])
    if calibrated is None:  # OpenDP's own even split, quantiles by its exponential mechanism in the plan
        even = dp_query if not plan.histograms else _Plan(info, query, coded).lazy(_query(lf, info, epsilon, delta))
        calibrated = _Calibrated(_resolve(even))
    return calibrated, inner._d_in, inner._d_out


def _builder(dp_query):
    """A function (plan, scale) -> OpenDP measurement on ``dp_query``'s input domain, metric and measure."""
    dp = _opendp()
    inner = object.__getattribute__(dp_query, "_query")
    input_domain, input_metric = inner._chain

    def make(query, scale):
        plan = object.__getattribute__(query, "polars_plan")
        return dp.m.make_private_lazyframe(input_domain=input_domain, input_metric=input_metric,
                                           output_measure=inner._output_measure, lazyframe=plan, global_scale=scale)
    return make, inner._d_in, inner._d_out


def _shared(dp_query, context, info: DatasetInfo, query: DPQuery, coded, epsilon: float, plan: _Plan):
    """The measurement of a several-statistics query whose epsilon is split by statistic (even, or by weights).

    Each statistic alone (a quantile: its column's histogram) is priced by OpenDP at scale 1; under pure
    DP its loss is linear in 1/scale, so its aggregates get the scales giving it ``share * epsilon``.
    OpenDP then checks the whole composition at (d_in, epsilon); None (fall back to OpenDP's even
    split) if that check fails.
    """
    from opendp.accuracy import summarize_polars_measurement

    make, d_in, d_out = _builder(dp_query)
    share = dict(zip([s.name for s in query.aggs], statistics.shares(query)))

    def fresh():  # plans are built on the same context query (its builders return new queries)
        return context

    scales: dict[str, float] = {}
    histogram_scales: dict[str, float] = {}
    try:
        for s in query.aggs:
            if s.column in plan.histograms and s.stat == "quantile":
                continue
            at_one = make(_Plan(info, query, coded, only=[s.name], histograms=True).lazy(fresh()), 1.0)
            factor = at_one.map(d_in) / (share[s.name] * epsilon)
            for row in summarize_polars_measurement(at_one).iter_rows(named=True):
                scales[row["column"]] = float(row["scale"]) * factor
        for column in plan.histograms:
            part = sum(share[s.name] for s in query.aggs if s.stat == "quantile" and s.column == column)
            histogram_scales[column] = make(plan.histogram(fresh(), column), 1.0).map(d_in) / (part * epsilon)
        for attempt in range(8):
            bump = 1.000001 ** attempt
            main = None
            if scales:
                bumped = {k: v * bump for k, v in scales.items()}
                main = make(_Plan(info, query, coded, scales=bumped, histograms=True).lazy(fresh()), 1.0)
            histograms = [(c, make(plan.histogram(fresh(), c), g * bump)) for c, g in histogram_scales.items()]
            candidate = _Calibrated(main, histograms)
            if candidate.check(d_in, d_out):
                return candidate
    except Exception:  # noqa: BLE001 - any surprise falls back to OpenDP's own even split
        return None
    return None


def _agg_accuracy(query: DPQuery, summaries: dict, alpha: float) -> list[dict]:
    """Per measurement of each statistic: its half-width at alpha/m and the statistic's share of epsilon."""
    rows = []
    for s, share in zip(query.aggs, statistics.shares(query)):
        parts = statistics.PARTS[s.stat]
        a = alpha / len(parts)
        for part in parts:
            label = s.name if len(parts) == 1 else f"{s.name} ({statistics.PART_NAMES[part]})"
            rows.append({"statistic": label, "accuracy": _acc(summaries[a], f"{s.name}__{part}"), "alpha": a,
                         "share": share})
    return rows


def _result_table(query: DPQuery, plan: _Plan, frame: pl.DataFrame | None, summaries: dict, alpha: float,
                  released: tuple) -> dict:
    if query.kind == "quantile" and plan.histograms:
        return _quantile_table(query, plan, released, alpha)
    if query.kind not in ("agg", "moments"):
        return _table(query, plan, frame, summaries[max(summaries)])
    if query.kind == "moments":
        noise = {r["column"]: (float(r["scale"]), r["distribution"])
                 for r in summaries[max(summaries)].iter_rows(named=True)}
        return statistics.moments_table(plan.info, query.columns, _decoded(plan, frame), noise)
    calibrated, histograms = released
    if frame is None:  # quantiles only: one row per group, from the first histogram's keys
        frame = next(iter(histograms.values())).select(plan.by).unique() if plan.by else pl.DataFrame({"_": [0]})
    counts = {column: _counts(plan, _decoded(plan, f)) for column, f in histograms.items()}

    def quantile(s, keys: tuple):
        edges, integer = plan.histograms[s.column]
        bins = counts[s.column].get(keys, [0.0] * (len(edges) - 1))
        return quantiles.from_counts(bins, edges, integer, s.p, calibrated.scale(s.column), alpha)

    return statistics.agg_table(plan.info, query, plan.by, _decoded(plan, frame),
                                lambda alias, m: _acc(summaries[alpha / m], alias),
                                quantile if calibrated.histograms else None)


def _quantile_table(query: DPQuery, plan: _Plan, released: tuple, alpha: float) -> dict:
    """The legacy quantile kind's table ``[*by, estimate, lower, upper]``, read off its column's noisy histogram
    (post-processing; :func:`workbench.channels.dp.quantiles.from_counts`)."""
    calibrated, histograms = released
    edges, integer = plan.histograms[query.column]
    counts = _counts(plan, _decoded(plan, histograms[query.column]))
    scale = calibrated.scale(query.column)
    rows = [[*keys, *quantiles.from_counts(bins, edges, integer, query.quantile, scale, alpha)]
            for keys, bins in counts.items()]
    return {"columns": [*plan.by, "estimate", "lower", "upper"], "data": rows}


def _counts(plan: _Plan, frame: pl.DataFrame) -> dict[tuple, list[float]]:
    """Noisy counts per bin (in bin order) for every group of a quantile histogram."""
    out: dict[tuple, list[float]] = {}
    for row in frame.sort([*plan.by, "__bin"]).iter_rows(named=True):
        out.setdefault(tuple(row[b] for b in plan.by), []).append(float(row["count"] or 0))
    return out


def _decoded(plan: _Plan, frame: pl.DataFrame) -> pl.DataFrame:
    """Codes back to their public labels, rows in key order (post-processing)."""
    for name, labels in plan.labels.items():
        frame = frame.with_columns(pl.col(name).replace_strict(list(range(len(labels))), labels))
    for name in plan.by:
        if frame.schema[name] == pl.Categorical:
            frame = frame.with_columns(pl.col(name).cast(pl.String))
    return frame.sort(plan.by) if plan.by else frame


def _accuracy_rows(summary: pl.DataFrame, alpha: float) -> list[dict]:
    rows = []
    for row in summary.iter_rows(named=True):
        acc = row.get("accuracy")
        rows.append({"statistic": row["column"],
                     "accuracy": None if acc is None or (isinstance(acc, float) and math.isnan(acc)) else float(acc),
                     "alpha": alpha})
    return rows


def _acc(summary: pl.DataFrame, column: str) -> float | None:
    row = summary.filter(pl.col("column") == column)
    if row.height == 0 or "accuracy" not in row.columns:
        return None
    value = row["accuracy"][0]
    return None if value is None else float(value)


def _note(query: DPQuery, plan: _Plan, summary: pl.DataFrame) -> str:
    notes = []
    if "threshold" in summary.columns:
        threshold = summary["threshold"].drop_nulls()
        if len(threshold):
            notes.append(f"Groups with a noisy count below {int(threshold[0])} are suppressed (private key set).")
    if query.kind == "quantile" and plan.histograms:
        notes.append("The quantile is read off a noisy histogram of the column on a public grid; its interval "
                     "holds with probability at least 95% (conservative).")
    elif query.kind == "quantile":
        notes.append("Quantiles use the exponential mechanism over public candidates between the column's bounds; "
                     "OpenDP gives no closed-form interval for them.")
    if query.kind == "mean":
        notes.append("Mean = noisy sum / noisy count; each is bounded at 97.5%, so the mean's interval holds at 95% "
                     "(union bound, conservative).")
    return " ".join(notes)


def _table(query: DPQuery, plan: _Plan, frame: pl.DataFrame, summary: pl.DataFrame) -> dict:
    for name, labels in plan.labels.items():  # codes back to their public labels (post-processing) ...
        if name != "bin":
            frame = frame.with_columns(pl.col(name).replace_strict(list(range(len(labels))), labels))
    if plan.by:  # ... sorted by label, and a histogram's bins by their code, so they come in numeric order
        frame = frame.sort(plan.by)
    edges, codes = plan.edges, (frame["bin"].to_list() if plan.edges is not None else [])
    if "bin" in plan.labels:
        labels = plan.labels["bin"]
        frame = frame.with_columns(pl.col("bin").replace_strict(list(range(len(labels))), labels))
    out = frame.select(plan.by) if plan.by else pl.DataFrame()
    if edges is not None:  # each bin's public edges, beside its label
        out = out.with_columns(pl.Series("bin_lower", [edges[i] for i in codes], dtype=pl.Float64),
                               pl.Series("bin_upper", [edges[i + 1] for i in codes], dtype=pl.Float64))
    kind = query.kind
    if kind in ("count", "histogram", "sum"):
        name = "sum" if kind == "sum" else "count"
        est = frame[name].cast(pl.Float64)
        acc = _acc(summary, name)
        out = out.with_columns(est.alias("estimate"), (est - acc).alias("lower"), (est + acc).alias("upper"))
    elif kind == "mean":
        s, c = frame["sum"].cast(pl.Float64), frame["count"].cast(pl.Float64)
        a_s, a_c = _acc(summary, "sum"), _acc(summary, "count")
        bounds = plan.bounds
        est, lower, upper = [], [], []
        for sv, cv in zip(s.to_list(), c.to_list()):
            e, lo, hi = mean_interval(sv, cv, a_s, a_c, bounds)
            est.append(e), lower.append(lo), upper.append(hi)
        out = out.with_columns(pl.Series("estimate", est, dtype=pl.Float64),
                               pl.Series("lower", lower, dtype=pl.Float64),
                               pl.Series("upper", upper, dtype=pl.Float64),
                               c.alias("noisy_count"))
    else:
        out = out.with_columns(frame["quantile"].cast(pl.Float64).alias("estimate"),
                               pl.lit(None, dtype=pl.Float64).alias("lower"),
                               pl.lit(None, dtype=pl.Float64).alias("upper"))
    return {"columns": out.columns, "data": [list(r) for r in out.iter_rows()]}
