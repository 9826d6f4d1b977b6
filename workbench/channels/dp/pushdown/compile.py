"""Compile a DP query to ONE SQL syntax tree (sqlglot) that renders for PostgreSQL and for Spark.

The SQL does the bounded, non-private part of a DP query inside the engine
that holds the table, and returns only per-group aggregates:

1. **Contribution bounding.** With an identifier privacy unit, each
   identifier keeps at most ``max_contributions`` of its rows, ranked by a
   keyed hash (MD5 of the node's secret and the row's declared columns), so
   neither the analyst nor the row order picks which rows count.
2. **Public keys only.** Rows whose group key is outside the column's public
   category list are dropped (as the Parquet path drops them); histograms bin
   a clipped value by public edges; quantiles bin it on the public candidate grid.
3. **Clipping and fixed point.** A summed value is null-imputed to the middle
   of its public bounds, clipped to them, scaled by ``10**decimals``, rounded
   and cast to BIGINT *per row*, so the engine sums integers: no float
   rounding can make one row move a sum by more than its clipped, scaled bound.

The tree is built once (:func:`compile_query`) and rendered per dialect
(:func:`render`): the PostgreSQL and Spark SQL come from the same place.
Filters and derived columns of the query language are meant to slot in as
expressions in :func:`_row_filter` and the inner select (row-wise steps keep
the sensitivity arguments of :mod:`workbench.channels.dp.pushdown.run` unchanged).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from workbench.protocol import DatasetInfo, DPQuery

RANK = "wb_rank"
BIN = "wb_bin"
CELL = "wb_cell"
BIGINT_LIMIT = 2 ** 62  # largest |sum| of scaled integers a query may produce (BIGINT sums, with headroom)


@dataclass
class Compiled:
    """One pushed-down query: its SQL tree and what the worker needs to read the rows it returns.

    ``keys``: (output column, public values) for every group key, in order; ``values``: the aggregate columns
    (``count``, ``sum``); ``scale``: the fixed-point factor of ``sum``; ``sum_bound``: the largest |scaled value|
    one row adds to a sum; ``labels``: key column -> public labels for ``wb_bin``/``wb_cell`` codes."""

    select: exp.Select
    keys: list[tuple[str, list]]
    values: list[str]
    scale: int = 1
    sum_bound: int = 0
    labels: dict[str, list] = field(default_factory=dict)

    def key_product(self) -> list[tuple]:
        return list(itertools.product(*[values for _, values in self.keys]))


def render(compiled: Compiled, dialect: str) -> str:
    """The SQL text for ``postgres`` or ``spark`` (one tree, two renderings)."""
    return compiled.select.sql(dialect=dialect)


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _num(value) -> exp.Expression:
    return exp.Literal.number(repr(value) if isinstance(value, float) else str(value))


def _literal(value, column_type: str) -> exp.Expression:
    if column_type == "bool":
        return exp.Boolean(this=bool(value))
    if column_type == "int":
        return _num(int(value))
    return exp.Literal.string(str(value))


def _table(name: str) -> exp.Table:
    parts = name.split(".")
    return exp.table_(parts[-1], db=parts[-2] if len(parts) > 1 else None,
                      catalog=parts[-3] if len(parts) > 2 else None, quoted=True)


def _clean(col) -> exp.Expression:
    """The column with nulls (and NaN, for floats) imputed to the middle of its public bounds."""
    lo, hi = col.bounds
    mid = _num(int((lo + hi) // 2)) if col.type == "int" else _num((lo + hi) / 2.0)
    value = exp.Coalesce(this=_col(col.name), expressions=[mid])
    if col.type == "float":
        nan = exp.EQ(this=_col(col.name), expression=exp.cast(exp.Literal.string("NaN"), "DOUBLE"))
        value = exp.Case(ifs=[exp.If(this=nan, true=mid)], default=value)
    return value


def _clipped(col, lo, hi) -> exp.Expression:
    return exp.Least(this=exp.Greatest(this=_clean(col), expressions=[_num(lo)]), expressions=[_num(hi)])


def fixed_point(col, decimals: int) -> tuple[exp.Expression, int, int]:
    """Per-row BIGINT ``round(clip(x) * scale)``, its scale, and the largest |value| one row can add."""
    lo, hi = col.bounds
    if col.type == "int":
        lo, hi = int(math.ceil(lo)), int(math.floor(hi))
        return exp.cast(_clipped(col, lo, hi), "BIGINT"), 1, max(abs(lo), abs(hi))
    scale = 10 ** decimals
    scaled = exp.Mul(this=_clipped(col, float(lo), float(hi)), expression=_num(scale))
    return exp.cast(exp.Round(this=scaled), "BIGINT"), scale, math.ceil(max(abs(lo), abs(hi)) * scale)


def bin_expression(col, edges: list[float]) -> exp.Expression:
    """The 0-based bin of the clipped value (left-closed bins, the last closed on both sides); null and NaN go
    to the first bin, as on the Parquet path."""
    lo, hi = edges[0], edges[-1]
    value = exp.Coalesce(this=_col(col.name), expressions=[_num(float(lo))])
    if col.type == "float":
        nan = exp.EQ(this=_col(col.name), expression=exp.cast(exp.Literal.string("NaN"), "DOUBLE"))
        value = exp.Case(ifs=[exp.If(this=nan, true=_num(float(lo)))], default=value)
    value = exp.Least(this=exp.Greatest(this=value, expressions=[_num(float(lo))]), expressions=[_num(float(hi))])
    ifs = [exp.If(this=exp.LT(this=value.copy(), expression=_num(float(e))), true=_num(i))
           for i, e in enumerate(edges[1:-1])]
    last = _num(len(edges) - 2)
    return exp.Case(ifs=ifs, default=last) if ifs else last


def cell_expression(col, candidates: list) -> exp.Expression:
    """The index of the public quantile candidate at or below the clipped value (a row-wise rounding down to
    the candidate grid, which is even between the column's bounds)."""
    lo, hi = float(candidates[0]), float(candidates[-1])
    step = (hi - lo) / (len(candidates) - 1)
    offset = exp.Paren(this=exp.Sub(this=_clipped(col, lo, hi), expression=_num(lo)))
    index = exp.Floor(this=exp.Div(this=offset, expression=_num(step)))
    bounded = exp.Least(this=exp.Greatest(this=index, expressions=[_num(0)]), expressions=[_num(len(candidates) - 1)])
    return exp.cast(bounded, "BIGINT")


def _row_filter(info: DatasetInfo, keys: list[str]) -> exp.Expression | None:
    """Rows kept before bounding: group keys inside their public category lists."""
    conditions = []
    for name in keys:
        col = info.column(name)
        conditions.append(exp.In(this=_col(name), expressions=[_literal(v, col.type) for v in col.categories]))
    return exp.and_(*conditions) if conditions else None


def _hash_order(info: DatasetInfo, secret: str) -> exp.Expression:
    """MD5 of the node's secret and every declared column of the row: a keyed, analyst-independent rank."""
    parts: list[exp.Expression] = [exp.Literal.string(secret)]
    for column in info.columns:
        parts.append(exp.Literal.string("|"))
        parts.append(exp.Coalesce(this=exp.cast(_col(column.name), "TEXT"), expressions=[exp.Literal.string("")]))
    return exp.MD5(this=exp.Concat(expressions=parts))


def bounded_rows(info: DatasetInfo, table: str, needed: list[exp.Expression], row_filter, secret: str):
    """The rows a query may read: filtered, then at most ``max_contributions`` per identifier."""
    unit = info.privacy_unit
    if not unit.id_column:
        inner = sqlglot.select(*needed).from_(_table(table))
        return inner.where(row_filter) if row_filter is not None else inner
    order = exp.Order(expressions=[exp.Ordered(this=_hash_order(info, secret))])
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(unit.id_column)], order=order)
    inner = sqlglot.select(*needed, exp.alias_(rank, RANK)).from_(_table(table))
    if row_filter is not None:
        inner = inner.where(row_filter)
    names = [n.alias_or_name for n in needed]
    outer = sqlglot.select(*[_col(n) for n in names]).from_(inner.subquery("wb_rows"))
    return outer.where(exp.LTE(this=exp.column(RANK), expression=_num(unit.max_contributions)))


def compile_query(info: DatasetInfo, query: DPQuery, table: str, secret: str, decimals: int) -> Compiled:
    """The SQL tree of ``query`` over ``table`` (query already checked by :func:`workbench.query.validate.validate`)."""
    from workbench.channels.dp.statistics import candidates
    from workbench.query.validate import bin_labels, histogram_bins

    kind = query.kind
    col = info.column(query.column) if query.column else None
    by = list(query.by)
    derived: dict[str, exp.Expression] = {}
    labels: dict[str, list] = {}
    keys = [(name, list(info.column(name).categories)) for name in by]
    if kind == "histogram":
        edges = histogram_bins(col, query.bins)
        if edges is None:
            by.append(col.name)
            keys.append((col.name, list(col.categories)))
        else:
            derived[BIN] = bin_expression(col, edges)
            labels[BIN] = bin_labels(edges)
            keys.append((BIN, list(range(len(edges) - 1))))
    if kind == "quantile":
        candidates = candidates(col)
        derived[CELL] = cell_expression(col, candidates)
        labels[CELL] = candidates
        keys.append((CELL, list(range(len(candidates)))))
    aggregates: list[exp.Expression] = [exp.alias_(exp.Count(this=exp.Star()), "count")]
    values, scale, bound = ["count"], 1, 0
    if kind in ("sum", "mean"):
        value, scale, bound = fixed_point(col, decimals)
        derived["wb_value"] = value
        aggregates = ([exp.alias_(exp.Sum(this=exp.column("wb_value")), "sum")]
                      + (aggregates if kind == "mean" else []))
        values = ["sum", "count"] if kind == "mean" else ["sum"]
    needed = [_col(n) for n in dict.fromkeys(by)] + [exp.alias_(e, n, quoted=False) for n, e in derived.items()]
    needed = needed or [exp.alias_(_num(1), "wb_one")]  # a plain count reads no column
    rows = bounded_rows(info, table, needed, _row_filter(info, [n for n in by if n not in derived]), secret)
    group = [exp.column(n) if n in derived else _col(n) for n, _ in keys]
    select = sqlglot.select(*group, *aggregates).from_(rows.subquery("wb_bounded"))
    if group:
        select = select.group_by(*group)
    return Compiled(select=select, keys=keys, values=values, scale=scale, sum_bound=bound, labels=labels)
