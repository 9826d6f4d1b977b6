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

from ..errors import InvalidQuery
from ..intervals import mean_interval
from ..node.data import POLARS_TYPES, check_stamp, scan
from .columnar import CODE_TYPE, coded_columns, columnar_frame, schema_frame
from ..protocol import DatasetInfo, DPQuery

MAX_PUBLIC_KEYS = 10_000
MAX_BINS = 1_000
QUANTILE_CANDIDATES = 1_001


def _opendp():
    import opendp.prelude as dp

    dp.enable_features("contrib")
    return dp


# ----------------------------------------------------------------- validation (public metadata only)


def validate(info: DatasetInfo, query: DPQuery, delta: float) -> None:
    """Refuse a query the public metadata cannot support, before any budget moves."""
    kind = query.kind
    if kind == "count":
        if query.column is not None:
            _column(info, query.column)
    else:
        if query.column is None:
            raise InvalidQuery(f"A {kind} needs a column.", code="invalid_query")
        col = _column(info, query.column)
        if kind in ("sum", "mean", "quantile"):
            if col.type not in ("int", "float"):
                raise InvalidQuery(f"Column '{col.name}' is {col.type}; a {kind} needs a numeric column.",
                                   code="wrong_type")
            if col.bounds is None:
                raise InvalidQuery(f"Column '{col.name}' has no public bounds; the owner must declare them.",
                                   code="bad_bounds")
        if kind == "quantile" and query.quantile is None:
            raise InvalidQuery("A quantile needs 'quantile' in (0, 1).", code="invalid_query")
        if kind == "histogram":
            _histogram_bins(col, query.bins)
    if query.kind != "quantile" and query.quantile is not None:
        raise InvalidQuery("'quantile' applies only to kind 'quantile'.", code="invalid_query")
    if query.kind != "histogram" and query.bins is not None:
        raise InvalidQuery("'bins' applies only to kind 'histogram'.", code="invalid_query")
    if len(set(query.by)) != len(query.by) or (query.column in query.by):
        raise InvalidQuery("Group-by columns must be distinct and differ from the measured column.",
                           code="invalid_query")
    private_keys = False
    for name in query.by:
        col = _column(info, name)
        if col.type in ("float",):
            raise InvalidQuery(f"Cannot group by float column '{name}'; use a histogram.", code="wrong_type")
        if col.categories is None:
            private_keys = True
    if private_keys and delta <= 0:
        raise InvalidQuery(
            "Grouping by a column without a public category set reveals which groups exist: "
            "it needs delta > 0 (small groups are suppressed).", code="bad_epsilon")
    if not private_keys and query.by and _key_count(info, query.by) > MAX_PUBLIC_KEYS:
        raise InvalidQuery(f"Too many groups (more than {MAX_PUBLIC_KEYS}).", code="invalid_query")


def _column(info: DatasetInfo, name: str):
    col = info.column(name)
    if col is None:
        raise InvalidQuery(f"Unknown column '{name}' in dataset '{info.name}'.", code="unknown_column")
    return col


def _key_count(info: DatasetInfo, by: list[str]) -> int:
    return math.prod(len(info.column(b).categories) for b in by)


def _histogram_bins(col, bins) -> list[float] | None:
    """Public bin edges for a numeric column (None for a categorical histogram)."""
    if col.type in ("category", "bool"):
        if bins is not None:
            raise InvalidQuery("A categorical histogram takes no bins.", code="invalid_query")
        return None
    if col.type not in ("int", "float"):
        raise InvalidQuery(f"Cannot make a histogram of {col.type} column '{col.name}'.", code="wrong_type")
    if col.bounds is None:
        raise InvalidQuery(f"Column '{col.name}' has no public bounds.", code="bad_bounds")
    lo, hi = col.bounds
    if bins is None:
        bins = 10
    if isinstance(bins, int):
        if not 1 <= bins <= MAX_BINS:
            raise InvalidQuery(f"bins must be between 1 and {MAX_BINS}.", code="invalid_query")
        width = (hi - lo) / bins
        return [lo + i * width for i in range(bins)] + [hi]
    edges = [float(e) for e in bins]
    if not 2 <= len(edges) <= MAX_BINS + 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise InvalidQuery("Bin edges must be 2 or more strictly increasing numbers.", code="bad_bounds")
    return edges


def _fmt(x: float) -> str:
    return f"{x:g}"


def _bin_labels(edges: list[float]) -> list[str]:
    labels = [f"[{_fmt(a)}, {_fmt(b)})" for a, b in zip(edges, edges[1:])]
    labels[-1] = labels[-1][:-1] + "]"
    return labels


# ----------------------------------------------------------------- compilation


def _needed(info: DatasetInfo, query: DPQuery) -> list[str]:
    """The columns a query reads (a count reads the narrowest one): OpenDP's plans decode every column they
    are given, e.g. a million identifier strings for a plain count."""
    names = [n for n in [query.column, *query.by] if n]
    if not names:
        narrow = [c.name for c in info.columns if c.type in ("bool", "int", "float")] or [info.columns[0].name]
        names = narrow[:1]
    return list(dict.fromkeys(names))


def _filled(col) -> pl.Expr:
    """A numeric column with nulls (and NaN) imputed to the middle of its public bounds."""
    lo, hi = col.bounds
    expr = pl.col(col.name)
    if col.type == "int":
        mid = int((lo + hi) // 2)
        return expr.fill_null(mid)
    mid = (lo + hi) / 2.0
    return expr.fill_nan(mid).fill_null(mid)


def _bounds(col) -> tuple:
    lo, hi = col.bounds
    return (int(math.ceil(lo)), int(math.floor(hi))) if col.type == "int" else (float(lo), float(hi))


def _candidates(col) -> list:
    lo, hi = _bounds(col)
    if col.type == "int" and hi - lo + 1 <= QUANTILE_CANDIDATES:
        return list(range(lo, hi + 1))
    step = (hi - lo) / (QUANTILE_CANDIDATES - 1)
    values = [lo + i * step for i in range(QUANTILE_CANDIDATES)]
    return sorted({int(round(v)) for v in values}) if col.type == "int" else values


class _Plan:
    """The pieces of one compiled query: group keys, aggregates, how to read the result.

    ``coded``: columns stored as codes into their public category list (see :mod:`workbench.dp.columnar`);
    their keys are codes and the released table is decoded back to labels (post-processing).
    """

    def __init__(self, info: DatasetInfo, query: DPQuery, coded: dict[str, list] | None = None):
        dp = _opendp()
        self.query = query
        self.by = list(query.by)
        self.with_columns: list[pl.Expr] = []
        self.keys: pl.DataFrame | None = None
        self.labels: dict[str, list] = {}  # key column -> labels of its codes 0..n-1
        coded = coded or {}
        kind = query.kind
        col = info.column(query.column) if query.column else None
        self.bounds = tuple(col.bounds) if col is not None and col.bounds else (0.0, 0.0)
        if kind == "histogram":
            edges = _histogram_bins(col, query.bins)
            if edges is None:
                self.by.append(col.name)
            else:
                labels = _bin_labels(edges)
                lo, hi = edges[0], edges[-1]
                expr = pl.col(col.name)
                expr = expr.fill_nan(lo) if col.type == "float" else expr
                expr = expr.fill_null(lo).cast(pl.Float64).clip(lo, hi)
                self.with_columns.append(_bin_index(expr, edges).alias("bin"))
                self.by.append("bin")
                self.labels["bin"] = labels
        if kind in ("count", "histogram"):
            self.aggs = [dp.len(signed=True).alias("count")]
        elif kind == "sum":
            self.aggs = [_filled(col).dp.sum(_bounds(col)).alias("sum")]
        elif kind == "mean":
            self.aggs = [_filled(col).dp.sum(_bounds(col)).alias("sum"), dp.len(signed=True).alias("count")]
        else:
            self.aggs = [_filled(col).dp.quantile(query.quantile, _candidates(col)).alias("quantile")]
        key_columns: dict[str, list] = {}
        key_types: dict[str, Any] = {}
        public = True
        for name in self.by:
            if name == "bin":
                key_columns[name], key_types[name] = list(range(len(self.labels["bin"]))), pl.Int64
                continue
            categories = info.column(name).categories
            if categories is None:
                public = False
                break
            if name in coded:
                self.labels[name] = list(coded[name])
                key_columns[name], key_types[name] = list(range(len(coded[name]))), CODE_TYPE
            else:
                key_columns[name], key_types[name] = list(categories), POLARS_TYPES[info.column(name).type]
        if self.by and public:
            product = list(itertools.product(*key_columns.values()))
            self.keys = pl.DataFrame(
                {n: pl.Series(n, [row[i] for row in product], dtype=key_types[n]) for i, n in enumerate(key_columns)})
        self.public_keys = public

    def lazy(self, frame):
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
    it returns, and any surprise falls back to the public ``query.resolve()``); tests/test_opendp_pin.py fails
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
    from opendp.accuracy import summarize_polars_measurement

    info = DatasetInfo.model_validate(task["info"])
    query = DPQuery.model_validate(task["query"])
    epsilon, delta, alpha = float(task["epsilon"]), float(task["delta"]), float(task["alpha"])
    validate(info, query, delta)
    columnar = task.get("columnar")  # a folder for this node's columnar copies (see workbench.dp.columnar)
    plan = _Plan(info, query, coded_columns(info) if columnar else None)
    if not plan.public_keys and delta <= 0:
        raise InvalidQuery("Private group keys need delta > 0.", code="bad_epsilon")
    needed = _needed(info, query)
    if task["mode"] == "release":
        check_stamp(task["path"], task.get("stamp"))
        lf = (columnar_frame(columnar, task["path"], task["format"], info, needed) if columnar
              else scan(task["path"], task["format"], info, needed))
    else:  # a preview reads no data
        lf = schema_frame(info, needed) if columnar else scan(task["path"], task["format"], info, needed)
    # Mean intervals combine two statistics: each is bounded at alpha/2 (union bound).
    stat_alpha = alpha / 2 if query.kind == "mean" else alpha
    hit = _CALIBRATED.get(task["cache_key"])
    if hit is not None and hit[0].check(hit[1], hit[2]):
        # Same shape seen before: reuse the measurement, which OpenDP has just re-checked at (d_in, d_out).
        _CALIBRATED.move_to_end(task["cache_key"])
        measurement, _d_in, _d_out, summary = hit
    else:
        dp_query = plan.lazy(_query(lf, info, epsilon, delta))
        measurement = _resolve(dp_query)
        summary = summarize_polars_measurement(measurement, stat_alpha)
        inner = object.__getattribute__(dp_query, "_query")
        _CALIBRATED[task["cache_key"]] = (measurement, inner._d_in, inner._d_out, summary)
        if len(_CALIBRATED) > _CACHE_SIZE:
            _CALIBRATED.popitem(last=False)
    accuracy = _accuracy_rows(summary, stat_alpha)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": _note(query, plan, summary)}
    frame = measurement(lf).collect()
    return {"accuracy": accuracy, "table": _table(query, plan, frame, summary), "note": _note(query, plan, summary)}


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
    if query.kind == "quantile":
        notes.append("Quantiles use the exponential mechanism over public candidates between the column's bounds; "
                     "OpenDP gives no closed-form interval for them.")
    if query.kind == "mean":
        notes.append("Mean = noisy sum / noisy count; the interval combines both 95% bounds (conservative).")
    return " ".join(notes)


def _table(query: DPQuery, plan: _Plan, frame: pl.DataFrame, summary: pl.DataFrame) -> dict:
    for name, labels in plan.labels.items():  # codes back to their public labels (post-processing)
        frame = frame.with_columns(pl.col(name).replace_strict(list(range(len(labels))), labels))
    out = frame.select(plan.by) if plan.by else pl.DataFrame()
    if plan.by:
        out = frame.sort(plan.by).select(plan.by)
        frame = frame.sort(plan.by)
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
