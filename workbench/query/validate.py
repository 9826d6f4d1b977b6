"""Validate a DP question on public metadata alone, before any request leaves the notebook and before any charge.

The client and the node run the same code (:func:`validate`): column types,
public bounds and categories, group-key rules and the fields each query kind
takes. Nothing here reads data; a question it refuses costs nothing.
"""

from __future__ import annotations

import math

from workbench.errors import InvalidQuery
from workbench.protocol import DatasetInfo, DPQuery
from workbench.query import language

MAX_PUBLIC_KEYS = 10_000
MAX_BINS = 1_000
NEEDS_BOUNDS = ("sum", "mean", "var", "std", "quantile")


def validate(info: DatasetInfo, query: DPQuery, delta: float) -> DatasetInfo:
    """Refuse a query the public metadata cannot support, before any budget moves.

    Returns the public schema the query sees (its derived columns appended)."""
    if query.kind == "sql":
        raise InvalidQuery("SQL is compiled by the node before validation.", code="invalid_query")
    info, _env = language.derived_schema(info, query)
    _only_for(query)
    kind = query.kind
    if kind == "agg":
        validate_agg(info, query)
    elif kind == "moments":
        validate_moments(info, query)
    elif kind == "count":
        if query.column is not None:
            column(info, query.column)
    else:
        if query.column is None:
            raise InvalidQuery(f"A {kind} needs a column.", code="invalid_query")
        col = column(info, query.column)
        if kind in ("sum", "mean", "quantile"):
            if col.type not in ("int", "float"):
                raise InvalidQuery(f"Column '{col.name}' is {col.type}; a {kind} needs a numeric column."
                                   + (_share_hint(col.name) if col.type == "bool" else ""), code="wrong_type")
            if col.bounds is None:
                raise InvalidQuery(f"Column '{col.name}' has no public bounds: the owner declares them for a "
                                   "dataset column; a derived column gets them from clip(low, high).",
                                   code="bad_bounds")
        if kind == "quantile" and query.quantile is None:
            raise InvalidQuery("A quantile needs 'quantile' in (0, 1).", code="invalid_query")
        if kind == "histogram":
            histogram_bins(col, query.bins)
    if query.kind != "quantile" and query.quantile is not None:
        raise InvalidQuery("'quantile' applies only to kind 'quantile'.", code="invalid_query")
    if query.kind != "histogram" and query.bins is not None:
        raise InvalidQuery("'bins' applies only to kind 'histogram'.", code="invalid_query")
    _validate_groups(info, query, delta)
    return info


def _validate_groups(info: DatasetInfo, query: DPQuery, delta: float) -> None:
    """Group-by keys: distinct, not float, public categories unless a delta allows thresholding (and then only
    counts: OpenDP needs a known number of groups to release sums, means or quantiles)."""
    kind = query.kind
    if len(set(query.by)) != len(query.by) or (query.column in query.by):
        raise InvalidQuery("Group-by columns must be distinct and differ from the measured column.",
                           code="invalid_query")
    private_keys = False
    for name in query.by:
        col = column(info, name)
        if col.type in ("float",):
            raise InvalidQuery(f"Cannot group by float column '{name}'; use a histogram.", code="wrong_type")
        if col.categories is None:
            private_keys = True
    measured = kind in ("sum", "mean", "quantile") or kind == "moments" or (
        kind == "agg" and any(s.stat != "count" for s in query.aggs or []))
    if private_keys and measured:
        # OpenDP needs a known number of groups for these ("max_groups must be known"): refused before any charge.
        raise InvalidQuery(
            f"A {kind} (other than a count) grouped by a column without a public category set is not supported; "
            "group by columns with public categories, or ask for a count.", code="invalid_query")
    if private_keys and delta <= 0:
        raise InvalidQuery(
            "Grouping by a column without a public category set reveals which groups exist: "
            "it needs delta > 0 (small groups are suppressed), e.g. release(epsilon=..., delta=1e-6).",
            code="needs_delta")
    if not private_keys and query.by and key_count(info, query.by) > MAX_PUBLIC_KEYS:
        raise InvalidQuery(f"Too many groups (more than {MAX_PUBLIC_KEYS}).", code="invalid_query")
    if private_keys and query.weights is not None:
        raise InvalidQuery("weights= needs public group keys (pure DP); drop weights or group by "
                           "columns with public categories.", code="invalid_query")


_KIND_FIELDS = {"aggs": ("agg",), "weights": ("agg",), "columns": ("moments",), "sql": ("sql",)}


def _only_for(query: DPQuery) -> None:
    for field, kinds in _KIND_FIELDS.items():
        if getattr(query, field) is not None and query.kind not in kinds:
            raise InvalidQuery(f"'{field}' applies only to kind {' or '.join(kinds)}.", code="invalid_query")
    if query.kind in ("agg", "moments") and (query.column is not None or query.quantile is not None
                                             or query.bins is not None):
        raise InvalidQuery(f"A {query.kind} query names its columns in its statistics.", code="invalid_query")


def delta_used(info: DatasetInfo, query: DPQuery, delta: float) -> float:
    """The delta a valid query actually spends: only private group keys (thresholding) use one; every other
    query adds pure Laplace noise and is priced, charged and computed at delta = 0."""
    private_keys = any((col := info.column(name)) is not None and col.categories is None for name in query.by)
    return delta if private_keys else 0.0


def _share_hint(name: str) -> str:
    return (f" For the share of rows where it is true, cast it to 0/1: "
            f"with_columns({name}_share=col('{name}').cast('int')), then the mean of '{name}_share'.")


def column(info: DatasetInfo, name: str):
    col = info.column(name)
    if col is None:
        raise language.unknown_column(name, [c.name for c in info.columns], info.name)
    return col


def key_count(info: DatasetInfo, by: list[str]) -> int:
    return math.prod(len(info.column(b).categories) for b in by)


def histogram_bins(col, bins) -> list[float] | None:
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



def _measured(info: DatasetInfo, name: str, what: str):
    col = info.column(name)
    if col is None:
        raise language.unknown_column(name, [c.name for c in info.columns], info.name)
    if col.type not in ("int", "float"):
        raise InvalidQuery(f"Column '{name}' is {col.type}; {what} needs a numeric column "
                           "(a true/false column: cast it to int).", code="wrong_type")
    if col.bounds is None:
        raise InvalidQuery(f"Column '{name}' has no public bounds, so {what} of it cannot be released: "
                           f"clip it, e.g. with_columns({name}=(...).clip(low, high)).", code="bad_bounds")
    return col


# ----------------------------------------------------------------- validation


def validate_agg(info: DatasetInfo, query: DPQuery) -> None:
    """Refuse a several-statistics query the public metadata cannot support."""
    if not query.aggs:
        raise InvalidQuery("An agg query needs at least one statistic.", code="invalid_query")
    names = [s.name for s in query.aggs]
    if len(set(names)) != len(names) or set(names) & set(query.by):
        raise InvalidQuery("Statistic names must be distinct and differ from the group-by columns.",
                           code="invalid_query")
    if query.weights is not None and len(query.weights) != len(query.aggs):
        raise InvalidQuery(f"weights needs one number per statistic ({len(query.aggs)}).", code="invalid_query")
    for s in query.aggs:
        if s.stat == "quantile" and s.p is None:
            raise InvalidQuery(f"Quantile '{s.name}' needs p in (0, 1).", code="bad_quantile")
        if s.stat != "quantile" and s.p is not None:
            raise InvalidQuery(f"'p' applies only to quantiles ('{s.name}' is a {s.stat}).", code="invalid_query")
        if s.stat in NEEDS_BOUNDS:
            if s.column is None:
                raise InvalidQuery(f"A {s.stat} ('{s.name}') needs a column.", code="invalid_query")
            _measured(info, s.column, f"a {s.stat}")
            if s.column in query.by:
                raise InvalidQuery(f"'{s.column}' is a group-by column; it cannot be measured too.",
                                   code="invalid_query")
        elif s.column is not None and info.column(s.column) is None:
            _measured(info, s.column, "a count")


def validate_moments(info: DatasetInfo, query: DPQuery) -> None:
    columns = query.columns or []
    if not columns or len(set(columns)) != len(columns):
        raise InvalidQuery("moments needs one or more distinct columns.", code="invalid_query")
    if query.by:
        raise InvalidQuery("Correlations and regressions are not grouped; filter instead.", code="invalid_query")
    for name in columns:
        _measured(info, name, "a correlation or regression")


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_labels(edges: list[float]) -> list[str]:
    """Public labels of histogram bins, e.g. ``[0, 10)``; the last bin is closed."""
    labels = [f"[{_fmt(a)}, {_fmt(b)})" for a, b in zip(edges, edges[1:])]
    labels[-1] = labels[-1][:-1] + "]"
    return labels
