"""Compile a DP query to ONE SQL syntax tree (sqlglot) that renders for PostgreSQL and for Spark.

The SQL does the bounded, non-private part of a DP query inside the engine
that holds the table, and returns only per-group aggregates:

1. **Contribution bounding.** With an identifier privacy unit, each
   identifier keeps at most ``max_contributions`` of its rows, ranked by a
   keyed hash (MD5 of the node's secret and the row's declared columns), so
   neither the analyst nor the row order picks which rows count.
2. **Public keys only.** Rows whose group key is outside the column's public
   category list are dropped (as the Parquet path drops them); histograms bin
   a clipped value by public edges; quantiles count it on the public grid of :func:`workbench.channels.dp.quantiles.grid`.
3. **Clipping and fixed point.** A summed value is null-imputed to the middle
   of its public bounds, clipped to them, scaled by ``10**decimals``, rounded
   and cast to BIGINT *per row*, so the engine sums integers: no float
   rounding can make one row move a sum by more than its clipped, scaled bound.

Filters and derived columns of the query language (:mod:`workbench.channels.dp.pushdown.expressions`) are
row-wise steps *before* bounding: derived columns are computed in one inner select each (so a column used
twice is computed once), the filter is the ``WHERE`` of the select that ranks the rows, and a derived number
is imputed and clipped to the bounds its public typing gives (:func:`workbench.query.language.derived_schema`)
like a dataset column. Why this keeps every sensitivity argument: a row-wise filter and row-wise derived
columns are functions of one row; applied before bounding, a unit's kept rows are still at most
``max_contributions``, chosen by a function of that unit's own (filtered) rows and the node's key, and no
other unit's kept rows change when it is added or removed. (OpenDP's plan on the file path filters after the
contribution bound is fixed; filtering first keeps more of a unit's matching rows, and the bound holds either way.)

The tree is built once (:func:`compile_query`, :func:`compile_histogram`) and rendered per dialect
(:func:`render`): the PostgreSQL and Spark SQL come from the same place.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

from workbench.channels.dp import quantiles
from workbench.channels.dp.statistics import bounds, moment_names
from workbench.channels.dp.pushdown.expressions import Compiler, is_nan, number
from workbench.errors import InvalidQuery
from workbench.protocol import ColumnInfo, DatasetInfo, DPQuery
from workbench.query import language
from workbench.query.validate import bin_labels, histogram_bins

RANK = "wb_rank"
BIN = "wb_bin"
BIGINT_LIMIT = 2 ** 62  # largest |sum| of scaled integers a query may produce (BIGINT sums, with headroom)


@dataclass
class Compiled:
    """One pushed-down query: its SQL tree and what the worker needs to read the rows it returns.

    ``keys``: (output column, public values, or None for a key without a public category list) for every group
    key, in order; ``values``: the aggregate columns
    in the order the SQL returns them (``count``, ``sum``, or ``<statistic>__<part>`` of an ``agg``);
    ``parts``: for each value, (the largest |integer| one row adds to it, its fixed-point scale);
    ``labels``: key column -> public labels for ``wb_bin``/``wb_cell`` codes."""

    select: exp.Select
    keys: list[tuple[str, list]]
    values: list[str]
    parts: dict[str, tuple[int, int]] = field(default_factory=dict)
    labels: dict[str, list] = field(default_factory=dict)

    @property
    def scale(self) -> int:
        return self.parts.get("sum", (0, 1))[1]

    @property
    def sum_bound(self) -> int:
        return self.parts.get("sum", (0, 1))[0]

    @property
    def private(self) -> bool:
        """Some group key has no public category list: its values come from the data (a private key set)."""
        return any(values is None for _, values in self.keys)

    def key_product(self) -> list[tuple]:
        return list(itertools.product(*[values for _, values in self.keys]))


def render(compiled: Compiled, dialect: str) -> str:
    """The SQL text for ``postgres`` or ``spark`` (one tree, two renderings)."""
    return compiled.select.sql(dialect=dialect)


def _col(name: str) -> exp.Column:
    return exp.column(name, quoted=True)


def _num(value) -> exp.Expression:
    return number(value)


def _literal(value, column_type: str) -> exp.Expression:
    if column_type == "bool":
        return exp.Boolean(this=bool(value))
    if column_type == "int":
        return _num(int(value))
    return exp.Literal.string(str(value))


def table_expression(name: str) -> exp.Table:
    """A (possibly schema- or catalog-qualified) table name as a quoted SQL table."""
    parts = name.split(".")
    return exp.table_(parts[-1], db=parts[-2] if len(parts) > 1 else None,
                      catalog=parts[-3] if len(parts) > 2 else None, quoted=True)


def _between(value: exp.Expression, lo, hi) -> exp.Expression:
    return exp.Least(this=exp.Greatest(this=value, expressions=[_num(lo)]), expressions=[_num(hi)])


def fitting_scale(max_abs: float, max_rows: int, decimals: int, integer: bool) -> tuple[int, int] | None:
    """(scale, per-row bound) of a fixed-point sum: ``10**d`` for the largest ``d <= decimals`` whose sum over
    ``max_rows`` rows fits in :data:`BIGINT_LIMIT` (integers: unscaled); None if none fits."""
    if integer:
        bound = int(math.ceil(max_abs))
        return (1, bound) if max_rows * bound < BIGINT_LIMIT else None
    for d in range(decimals, -1, -1):
        bound = math.ceil(max_abs * 10 ** d)
        if max_rows * bound < BIGINT_LIMIT:
            return 10 ** d, bound
    return None


class Rows:
    """Where a query reads its rows: the table, or the table with the query's derived columns computed in one
    inner select each; ``value(name)`` is the SQL expression of any column the query sees."""

    def __init__(self, info: DatasetInfo, query: DPQuery, table: str | exp.Expression):
        self.info = info
        self.schema, self.env = language.derived_schema(info, query)
        declared = {c.name: _col(c.name) for c in info.columns}
        compiler = Compiler(self.env, declared)
        for derived in query.derive:
            compiler.bind(derived.name, derived.expr)
        where = compiler.compile(query.where)[0] if query.where is not None else None
        self.names = {name: compiler.ref(name) for name in compiler.refs}
        self.where = where
        relation = table_expression(table) if isinstance(table, str) else table.copy()  # e.g. consenting rows
        self.source = compiler.layers(relation, list(declared.values()))
        if not isinstance(self.source, exp.Table):
            self.source = self.source.subquery("wb_derived")

    def column(self, name: str) -> ColumnInfo:
        return self.schema.column(name)

    def value(self, name: str) -> exp.Expression:
        return self.names[name].copy()

    def derived(self, name: str) -> bool:
        return name not in {c.name for c in self.info.columns}

    def clean(self, name: str) -> exp.Expression:
        """The column with nulls (and NaN, where the value is a double) imputed to the middle of its bounds."""
        col = self.column(name)
        lo, hi = col.bounds
        mid = _num(int((lo + hi) // 2)) if col.type == "int" else _num((lo + hi) / 2.0)
        value = exp.Coalesce(this=self.value(name), expressions=[mid])
        if col.type == "float" or self.derived(name):
            value = exp.Case(ifs=[exp.If(this=is_nan(self.value(name)), true=mid.copy())], default=value)
        return value

    def clipped(self, name: str) -> exp.Expression:
        lo, hi = self.column(name).bounds
        return _between(self.clean(name), float(lo), float(hi))


def fixed(value: exp.Expression, lo: float, hi: float, scaled: tuple[int, int]) -> exp.Expression:
    """Per-row BIGINT ``round(clip(value, lo, hi) * scale)``."""
    scale, _ = scaled
    clipped = _between(value, lo, hi)
    if scale == 1:
        return exp.cast(exp.Round(this=clipped), "BIGINT")
    return exp.cast(exp.Round(this=exp.Mul(this=clipped, expression=_num(scale))), "BIGINT")


def grid_index(value: exp.Expression, lo: float, hi: float, cells: int) -> exp.Expression:
    """The 0-based cell of ``value`` on ``cells`` equal cells over [lo, hi] (clipped; the last cell closed)."""
    step = (hi - lo) / cells
    offset = exp.Paren(this=exp.Sub(this=_between(value, float(lo), float(hi)), expression=_num(float(lo))))
    index = exp.Floor(this=exp.Div(this=offset, expression=_num(step)))
    return exp.cast(_between(index, 0, cells - 1), "BIGINT")


def bin_expression(rows: Rows, name: str, edges: list[float]) -> exp.Expression:
    """The 0-based bin of the clipped value (left-closed bins, the last closed on both sides); null and NaN go
    to the first bin, as on the Parquet path."""
    lo, hi = edges[0], edges[-1]
    value = exp.Coalesce(this=rows.value(name), expressions=[_num(float(lo))])
    value = exp.Case(ifs=[exp.If(this=is_nan(rows.value(name)), true=_num(float(lo)))], default=value)
    value = _between(value, float(lo), float(hi))
    ifs = [exp.If(this=exp.LT(this=value.copy(), expression=_num(float(e))), true=_num(i))
           for i, e in enumerate(edges[1:-1])]
    last = _num(len(edges) - 2)
    return exp.Case(ifs=ifs, default=last) if ifs else last


def _row_filter(rows: Rows, keys: list[str]) -> exp.Expression | None:
    """Rows kept before bounding: the query's filter, and group keys inside their public category lists (a key
    without one keeps every value: the noisy counts' threshold decides which of them are released)."""
    conditions = [exp.Paren(this=rows.where)] if rows.where is not None else []
    for name in keys:
        col = rows.column(name)
        if col.categories is None:
            continue
        conditions.append(exp.In(this=rows.value(name), expressions=[_literal(v, col.type) for v in col.categories]))
    return exp.and_(*conditions) if conditions else None


def _hash_order(info: DatasetInfo, secret: str) -> exp.Expression:
    """MD5 of the node's secret and every declared column of the row: a keyed, analyst-independent rank."""
    parts: list[exp.Expression] = [exp.Literal.string(secret)]
    for column in info.columns:
        parts.append(exp.Literal.string("|"))
        parts.append(exp.Coalesce(this=exp.cast(_col(column.name), "TEXT"), expressions=[exp.Literal.string("")]))
    return exp.MD5(this=exp.Concat(expressions=parts))


def bounded_rows(info: DatasetInfo, source: exp.Expression, needed: list[exp.Expression], row_filter, secret: str):
    """The rows a query may read: filtered, then at most ``max_contributions`` per identifier."""
    unit = info.privacy_unit
    if not unit.id_column:
        inner = sqlglot.select(*needed).from_(source)
        return inner.where(row_filter) if row_filter is not None else inner
    order = exp.Order(expressions=[exp.Ordered(this=_hash_order(info, secret))])
    rank = exp.Window(this=exp.RowNumber(), partition_by=[_col(unit.id_column)], order=order)
    inner = sqlglot.select(*needed, exp.alias_(rank, RANK)).from_(source)
    if row_filter is not None:
        inner = inner.where(row_filter)
    names = [n.alias_or_name for n in needed]
    outer = sqlglot.select(*[exp.column(n) for n in names]).from_(inner.subquery("wb_rows"))
    return outer.where(exp.LTE(this=exp.column(RANK), expression=_num(unit.max_contributions)))


def _assemble(rows: Rows, keys: list[tuple[str, list]], computed: dict[str, exp.Expression],
              values: dict[str, tuple[exp.Expression | None, tuple[int, int]]], secret: str,
              labels: dict[str, list]) -> Compiled:
    """``SELECT keys, COUNT(*) / SUM(value) ... FROM (bounded rows) GROUP BY keys``.

    ``values``: alias -> (per-row BIGINT expression to sum, or None for a count; (per-row bound, scale))."""
    plain = [n for n, _ in keys if n not in computed]
    needed = [exp.alias_(rows.value(n), f"wb_k{i}") for i, n in enumerate(plain)]
    needed += [exp.alias_(e, n) for n, e in computed.items()]
    aggregates, parts = [], {}
    for i, (alias, (row_value, scaled)) in enumerate(values.items()):
        if row_value is None:
            aggregates.append(exp.alias_(exp.Count(this=exp.Star()), f"wb_v{i}"))
        else:
            needed.append(exp.alias_(row_value, f"wb_x{i}"))
            aggregates.append(exp.alias_(exp.Sum(this=exp.column(f"wb_x{i}")), f"wb_v{i}"))
        parts[alias] = (scaled[1], scaled[0]) if row_value is not None else (1, 1)
    needed = needed or [exp.alias_(_num(1), "wb_one")]  # a plain count reads no column
    bounded = bounded_rows(rows.info, rows.source, needed, _row_filter(rows, plain), secret)
    group = [exp.column(f"wb_k{plain.index(n)}") if n in plain else exp.column(n) for n, _ in keys]
    select = sqlglot.select(*group, *aggregates).from_(bounded.subquery("wb_bounded"))
    if group:
        select = select.group_by(*group)
    return Compiled(select=select, keys=keys, values=list(values), parts=parts, labels=labels)


COUNT = (None, (1, 1))


def key_values(col: ColumnInfo) -> list | None:
    """A group key's public values, or None when it has no public category list (a private key set)."""
    return None if col.categories is None else list(col.categories)


def _overflow(name: str, max_rows: int, decimals: int) -> InvalidQuery:
    return InvalidQuery(f"A sum of '{name}' over max_rows={max_rows} rows could overflow a 64-bit integer even "
                        f"unscaled (the source has {decimals} decimals); narrow its bounds.", code="would_overflow")


def _scaled(rows: Rows, name: str, max_abs: float, decimals: int, integer: bool = False) -> tuple[int, int]:
    scaled = fitting_scale(max_abs, rows.info.max_rows, decimals, integer)
    if scaled is None:
        raise _overflow(name, rows.info.max_rows, decimals)
    return scaled


def sum_value(rows: Rows, name: str, decimals: int) -> tuple[exp.Expression, tuple[int, int]]:
    """A bounded sum's per-row integer: the imputed value clipped to its public bounds, in fixed point."""
    col = rows.column(name)
    lo, hi = bounds(col)
    scaled = _scaled(rows, name, max(abs(lo), abs(hi)), decimals, col.type == "int")
    return fixed(rows.clean(name), lo, hi, scaled), scaled


def _centred(rows: Rows, name: str) -> tuple[exp.Expression, float, float]:
    """``clip(x) - c`` as a double (``c``, ``h``: the centre and half-width of the public bounds)."""
    lo, hi = rows.column(name).bounds
    c, h = (lo + hi) / 2.0, (hi - lo) / 2.0
    clipped = exp.cast(rows.clipped(name), "DOUBLE")
    return exp.Paren(this=exp.Sub(this=clipped, expression=_num(c))), c, h


def spread_values(rows: Rows, statistic: str, name: str, decimals: int) -> dict:
    """A variance's parts, as the file path builds them: count, sum of ``x - c``, sum of ``(x - c)^2`` in
    [0, h^2] (:mod:`workbench.channels.dp.statistics`)."""
    centred, _, h = _centred(rows, name)
    first = _scaled(rows, name, h, decimals)
    second = _scaled(rows, name, h * h, decimals)
    square = exp.Mul(this=centred.copy(), expression=centred.copy())
    return {f"{statistic}__n": COUNT, f"{statistic}__s": (fixed(centred, -h, h, first), first),
            f"{statistic}__s2": (fixed(square, 0.0, h * h, second), second)}


def agg_values(rows: Rows, query: DPQuery, decimals: int) -> dict:
    """The summed parts of a several-statistics query (quantiles are counted on their own grid:
    :func:`compile_histogram`)."""
    values: dict = {}
    for s in query.aggs:
        if s.stat == "count":
            values[f"{s.name}__n"] = COUNT
        elif s.stat in ("sum", "mean"):
            values[f"{s.name}__s"] = sum_value(rows, s.column, decimals)
            if s.stat == "mean":
                values[f"{s.name}__n"] = COUNT
        elif s.stat in ("var", "std"):
            values.update(spread_values(rows, s.name, s.column, decimals))
    return values


def moment_values(rows: Rows, columns: list[str], decimals: int) -> dict:
    """The moments' parts: the count, every ``sum z_i`` and every ``sum z_i z_j`` (``z`` = the value centred and
    scaled to [-1, 1] by its public bounds, as :func:`workbench.channels.dp.statistics.moments_aggregates`)."""
    z = {}
    for name in columns:
        centred, _, h = _centred(rows, name)
        z[name] = _between(exp.Div(this=centred, expression=_num(h or 1.0)), -1.0, 1.0)
    values: dict = {"n": COUNT}
    for alias, a, b in moment_names(columns)[1:]:
        scaled = _scaled(rows, a, 1.0, decimals)
        if b is None:
            values[alias] = (fixed(z[a].copy(), -1.0, 1.0, scaled), scaled)
        else:
            lo = 0.0 if a == b else -1.0
            values[alias] = (fixed(exp.Mul(this=z[a].copy(), expression=z[b].copy()), lo, 1.0, scaled), scaled)
    return values


def compile_query(info: DatasetInfo, query: DPQuery, table: str | exp.Expression, secret: str,
                  decimals: int) -> Compiled:
    """The SQL tree of ``query`` over ``table`` (query already checked by :func:`workbench.query.validate.validate`);
    quantiles (the kind, and an ``agg``'s) are separate queries (:func:`compile_histogram`)."""
    rows = Rows(info, query, table)
    kind = query.kind
    keys = [(name, key_values(rows.column(name))) for name in query.by]
    computed: dict[str, exp.Expression] = {}
    labels: dict[str, list] = {}
    values: dict = {"count": COUNT}
    if kind == "histogram":
        col = rows.column(query.column)
        edges = histogram_bins(col, query.bins)
        if edges is None:
            keys.append((col.name, list(col.categories)))
        else:
            computed[BIN], labels[BIN] = bin_expression(rows, col.name, edges), bin_labels(edges)
            keys.append((BIN, list(range(len(edges) - 1))))
    elif kind in ("sum", "mean"):
        values = {"sum": sum_value(rows, query.column, decimals), **(values if kind == "mean" else {})}
    elif kind == "agg":
        values = agg_values(rows, query, decimals)
    elif kind == "moments":
        values = moment_values(rows, query.columns, decimals)
    return _assemble(rows, keys, computed, values, secret, labels)


def compile_histogram(info: DatasetInfo, query: DPQuery, column: str, table: str | exp.Expression,
                      secret: str) -> Compiled:
    """Counts per group and per cell of ``column``'s public quantile grid (:func:`workbench.channels.dp.quantiles.grid`):
    the histogram the quantiles of that column are read from."""
    rows = Rows(info, query, table)
    edges, _ = quantiles.grid(rows.column(column))
    keys = [(name, key_values(rows.column(name))) for name in query.by]
    keys.append((BIN, list(range(len(edges) - 1))))
    computed = {BIN: grid_index(rows.clean(column), edges[0], edges[-1], len(edges) - 1)}
    return _assemble(rows, keys, computed, {"count": COUNT}, secret, {BIN: edges})
