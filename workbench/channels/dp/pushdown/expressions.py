"""The query language's expression trees (filters, derived columns) as sqlglot expressions, for every dialect.

The semantics are those of the Polars compilation (:func:`workbench.query.language.to_polars`): Kleene
logic with nulls, ``/`` always a float division (``x / 0`` is +-inf, ``0 / 0`` NaN), ``cut`` labels
computed from the public edges (null and NaN get no label), ``clip`` keeps nulls, a cast to int
truncates toward zero. Trees are typed by :func:`workbench.query.language.type_of` before they get here.

**No data-dependent errors.** An SQL error that happens only for some values would tell the analyst
something about the rows, for free, outside any mechanism. So every numeric operation runs in double
precision (an integer column is cast first: BIGINT arithmetic can overflow, which PostgreSQL and Spark's
ANSI mode report as errors), and the operands of arithmetic are first clamped to magnitudes PostgreSQL
cannot overflow or underflow with (``_tame``: 0, or between 1e-150 and 1e150; sums of at most 1e300),
NaN and nulls passing through. A division by zero is answered as Polars answers it, never computed.
Values beyond 1e150 (or non-zero below 1e-150) are therefore treated as +-1e150 (or 0) inside arithmetic,
where Polars would keep them; no declared bound comes near.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from workbench.protocol import Between, Binary, Cast, ColumnRef, Cut, FillNull, IsIn, Lit, Logical, Unary
from workbench.query.language import Typed, children, cut_labels, type_of

BIG, TINY, SUM_CAP = 1e150, 1e-150, 1e300


def number(value) -> exp.Expression:
    if isinstance(value, bool):
        return exp.Boolean(this=value)
    if isinstance(value, float):
        return exp.Literal.number(repr(value))
    return exp.Literal.number(str(value))


def special(name: str) -> exp.Expression:
    """``NaN``, ``Infinity`` or ``-Infinity`` as a double (the same text in PostgreSQL and Spark)."""
    return exp.cast(exp.Literal.string(name), "DOUBLE")


def is_nan(value: exp.Expression) -> exp.Expression:
    """True for NaN (PostgreSQL and Spark both order NaN above every number and equal to itself)."""
    return exp.EQ(this=value.copy(), expression=special("NaN"))


def literal(value) -> exp.Expression:
    if value is None:
        return exp.Null()
    if isinstance(value, (bool, int, float)):
        return number(value)
    return exp.Literal.string(str(value))


def _double(value: exp.Expression, typed: Typed) -> exp.Expression:
    """A numeric operand as DOUBLE (a bool cast first would not reach arithmetic: typing refuses it)."""
    return exp.cast(value, "DOUBLE") if typed.type == "int" else value


def _case(*pairs, default=None) -> exp.Case:
    return exp.Case(ifs=[exp.If(this=c, true=v) for c, v in pairs], default=default)


def _tame(value: exp.Expression, cap: float = BIG) -> exp.Expression:
    """``value`` with its magnitude clamped to 0 or [TINY, cap] (NaN and null pass through)."""
    v = value.copy
    return _case((is_nan(v()), v()),
                 (exp.GT(this=v(), expression=number(cap)), number(cap)),
                 (exp.LT(this=v(), expression=number(-cap)), number(-cap)),
                 (exp.LT(this=exp.Abs(this=v()), expression=number(TINY)), number(0.0)),
                 default=v())


def _divide(left: exp.Expression, right: exp.Expression) -> exp.Expression:
    """``left / right`` as Polars computes it on floats, with ``x / 0`` answered without dividing."""
    zero = exp.EQ(this=right.copy(), expression=number(0.0))
    by_zero = _case((exp.EQ(this=left.copy(), expression=number(0.0)), special("NaN")),
                    (is_nan(left), special("NaN")),
                    (exp.GT(this=left.copy(), expression=number(0.0)), special("Infinity")),
                    (exp.LT(this=left.copy(), expression=number(0.0)), special("-Infinity")))
    return _case((zero, by_zero), default=exp.Div(this=exp.Paren(this=left), expression=exp.Paren(this=right)))


def _arithmetic(op: str, left: exp.Expression, right: exp.Expression) -> exp.Expression:
    if op in ("add", "sub"):
        left, right = _tame(left, SUM_CAP), _tame(right, SUM_CAP)
        node = exp.Add if op == "add" else exp.Sub
        return exp.Paren(this=node(this=left, expression=right))
    left, right = _tame(left), _tame(right)
    if op == "mul":
        return exp.Paren(this=exp.Mul(this=left, expression=right))
    return _divide(left, right)


_COMPARE = {"eq": exp.EQ, "ne": exp.NEQ, "lt": exp.LT, "le": exp.LTE, "gt": exp.GT, "ge": exp.GTE}


class Compiler:
    """Compiles typed trees to SQL, one select *layer* per level of the trees.

    Every operator's value is computed once, as a column ``wb_e<n>`` of the layer after its operands' (an
    operator may name an operand several times, e.g. to test it for null; inlined, nested operators would grow
    the SQL exponentially). ``bind`` compiles a derived column; :meth:`layers` wraps a table in the selects."""

    def __init__(self, env: dict[str, Typed], columns: dict[str, exp.Expression]):
        self.env = env
        self.refs: dict[str, tuple[exp.Expression, int]] = {name: (sql, 0) for name, sql in columns.items()}
        self.levels: dict[int, dict[str, exp.Expression]] = {}

    def typed(self, expr) -> Typed:
        return type_of(expr, self.env, "")

    def bind(self, name: str, expr) -> None:
        self.refs[name] = self.compile(expr)

    def ref(self, name: str) -> exp.Expression:
        return self.refs[name][0].copy()

    def compile(self, expr) -> tuple[exp.Expression, int]:
        """(a reference to the value of ``expr``, the layer that computes it)."""
        if isinstance(expr, ColumnRef):
            sql, level = self.refs[expr.name]
            return sql.copy(), level
        if isinstance(expr, Lit):
            return literal(expr.value), 0
        compiled = [self.compile(c) for c in children(expr)]
        level = 1 + max(lv for _, lv in compiled)
        alias = f"wb_e{sum(len(v) for v in self.levels.values())}"
        self.levels.setdefault(level, {})[alias] = self._node(expr, [sql for sql, _ in compiled])
        return exp.column(alias), level

    def layers(self, source: exp.Expression, carried: list[exp.Expression]) -> exp.Expression:
        """``source`` with one select per level on top, each carrying ``carried`` and every earlier value."""
        done: list[str] = []
        for level in sorted(self.levels):
            values = self.levels[level]
            select = sqlglot.select(*[c.copy() for c in carried], *[exp.column(a) for a in done],
                                    *[exp.alias_(e, a) for a, e in values.items()])
            source = select.from_(source if isinstance(source, exp.Table) else source.subquery(f"wb_l{level}"))
            done.extend(values)
        return source

    def _node(self, expr, args: list[exp.Expression]) -> exp.Expression:  # noqa: C901 - one case per operator
        if isinstance(expr, Binary):
            return self._binary(expr, *args)
        if isinstance(expr, Logical):
            parts = [exp.Paren(this=a) for a in args]
            return exp.Paren(this=exp.and_(*parts) if expr.op == "and" else exp.or_(*parts))
        arg = args[0]
        if isinstance(expr, IsIn):
            return exp.Paren(this=exp.or_(*[exp.EQ(this=arg.copy(), expression=literal(v)) for v in expr.values]))
        if isinstance(expr, Unary):
            return self._unary(expr, arg)
        if isinstance(expr, Between):
            return self._between(expr, arg)
        if isinstance(expr, Cut):
            return self._cut(expr, arg)
        if isinstance(expr, FillNull):
            return exp.Coalesce(this=arg, expressions=[literal(expr.value)])
        return self._cast(expr, arg)

    def _binary(self, expr: Binary, left: exp.Expression, right: exp.Expression) -> exp.Expression:
        if expr.op in _COMPARE:
            return exp.Paren(this=_COMPARE[expr.op](this=left, expression=right))
        left = _double(left, self.typed(expr.left))
        right = _double(right, self.typed(expr.right))
        return _arithmetic(expr.op, left, right)
    def _unary(self, expr: Unary, arg: exp.Expression) -> exp.Expression:
        if expr.op == "not":
            return exp.Paren(this=exp.Not(this=exp.Paren(this=arg)))
        if expr.op == "is_null":
            return exp.Paren(this=exp.Is(this=arg, expression=exp.Null()))
        return exp.Abs(this=_double(arg, self.typed(expr.arg)))

    def _between(self, expr: Between, arg: exp.Expression) -> exp.Expression:
        if expr.op == "between":
            return exp.Paren(this=exp.and_(exp.GTE(this=arg.copy(), expression=number(float(expr.low))),
                                           exp.LTE(this=arg.copy(), expression=number(float(expr.high)))))
        lo, hi = self.typed(expr).bounds
        value = _double(arg, self.typed(expr.arg))
        clipped = exp.Least(this=exp.Greatest(this=value.copy(), expressions=[number(float(lo))]),
                            expressions=[number(float(hi))])
        # GREATEST/LEAST skip nulls, Polars' clip keeps them; NaN stays NaN as in Polars.
        return _case((exp.Is(this=value.copy(), expression=exp.Null()), exp.Null()), (is_nan(value), value.copy()),
                     default=clipped)

    def _cut(self, expr: Cut, arg: exp.Expression) -> exp.Expression:
        labels = cut_labels(expr.edges)
        missing = exp.or_(exp.Is(this=arg.copy(), expression=exp.Null()), is_nan(arg))
        pairs = [(missing, exp.Null())]
        pairs += [(exp.LTE(this=arg.copy(), expression=number(float(e))), exp.Literal.string(label))
                  for e, label in zip(expr.edges, labels)]
        return _case(*pairs, default=exp.Literal.string(labels[-1]))

    def _cast(self, expr: Cast, arg: exp.Expression) -> exp.Expression:
        source = self.typed(expr.arg)
        if expr.to == "bool":
            return exp.Paren(this=exp.NEQ(this=arg, expression=number(0)))
        if source.type == "bool":
            one, zero = (number(1), number(0)) if expr.to == "int" else (number(1.0), number(0.0))
            return _case((exp.Paren(this=arg.copy()), one), (exp.Not(this=exp.Paren(this=arg.copy())), zero))
        value = _double(arg, source)
        if expr.to == "float" or source.type == "int":
            return value
        # Truncate toward zero in double precision (PostgreSQL's CAST to BIGINT rounds, Spark's truncates,
        # and both fail beyond 2^63): beyond 2^52 every double is an integer already.
        truncated = _case((exp.GTE(this=value.copy(), expression=number(0.0)), exp.Floor(this=value.copy())),
                          default=exp.Neg(this=exp.Floor(this=exp.Neg(this=value.copy()))))
        small = exp.LT(this=exp.Abs(this=value.copy()), expression=number(4.5e15))
        return _case((small, exp.cast(truncated, "DOUBLE")), default=value)
