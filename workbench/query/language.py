"""The DP query language's compile step: expression trees -> typed public schema -> Polars expressions.

Pure functions of the public metadata and the spec; no data, no OpenDP. Three jobs:

* :func:`derived_schema` types every expression tree against the dataset's public
  schema and returns the schema a query sees (the dataset's columns plus its
  derived ones, with their public bounds and category labels). Bounds of a
  derived number come only from ``clip`` or from a column's declared bounds
  (kept by ``fill_null`` inside them and by ``cast``; a boolean cast to a
  number is 0/1); ``cut`` labels are computed from the public edges.
* :func:`to_polars` compiles a tree to a Polars expression, rewriting what
  OpenDP 0.16 does not analyse into what it does (``is_in`` -> an ``or`` of
  equalities, ``between`` -> two comparisons, ``abs`` -> a product with a
  sign). OpenDP then analyses the whole plan and proves its sensitivity;
  nothing here claims one.
* :func:`canonical` rewrites a query so that equivalent spellings (operand
  order of commutative operators, nesting of and/or, ``65 < age`` vs
  ``age > 65``, duplicate ``is_in`` values, unused derived columns) have one
  form: the identity under which an answer is replayed for free.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

import polars as pl

from workbench.errors import InvalidQuery
from workbench.protocol import (MAX_EXPR_DEPTH, MAX_EXPR_NODES, Between, Binary, Cast, ColumnInfo, ColumnRef, Cut,
                        DatasetInfo, Derived, DPQuery, FillNull, IsIn, Lit, Logical, Unary)

COMPARISONS = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
ARITHMETIC = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_MIRROR = {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le", "eq": "eq", "ne": "ne"}
_NUMERIC = ("int", "float")
_TEXT = ("category", "string", "id")


@dataclass(frozen=True)
class Typed:
    """What the public metadata says about an expression's values."""

    type: str  # int, float, bool, category, string, id, null
    bounds: tuple[float, float] | None = None
    categories: tuple | None = None
    cut: bool = False  # a cut label (a pl.Categorical key)


# ----------------------------------------------------------------- size caps


def children(expr) -> list:
    if isinstance(expr, (ColumnRef, Lit)):
        return []
    if isinstance(expr, Binary):
        return [expr.left, expr.right]
    if isinstance(expr, Logical):
        return list(expr.args)
    return [expr.arg]


def check_size(query: DPQuery) -> None:
    """Refuse expression trees over the caps (nodes over all trees, depth of any)."""
    trees = [d.expr for d in query.derive] + ([query.where] if query.where is not None else [])
    total = 0
    stack = [(t, 1) for t in trees]
    while stack:
        expr, depth = stack.pop()
        total += 1
        if depth > MAX_EXPR_DEPTH or total > MAX_EXPR_NODES:
            raise InvalidQuery(f"The question's expressions are too large (at most {MAX_EXPR_NODES} parts, "
                               f"nested at most {MAX_EXPR_DEPTH} deep).", code="query_too_large")
        stack.extend((c, depth + 1) for c in children(expr))


# ----------------------------------------------------------------- typing against public metadata


def unknown_column(name: str, known: list[str], dataset: str) -> InvalidQuery:
    """An ``unknown_column`` error naming the closest known column."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f" Did you mean '{close[0]}'?" if close else f" Columns: {', '.join(known)}."
    return InvalidQuery(f"Unknown column '{name}' in dataset '{dataset}'.{hint}", code="unknown_column",
                        details={"column": name, "suggestion": close[0] if close else None})


def _column_type(col: ColumnInfo) -> Typed:
    bounds = tuple(col.bounds) if col.bounds is not None else None
    if col.type == "bool":
        return Typed("bool", categories=(False, True))
    return Typed(col.type, bounds, tuple(col.categories) if col.categories else None)


def _literal_type(value) -> Typed:
    if value is None:
        return Typed("null")
    if isinstance(value, bool):
        return Typed("bool")
    if isinstance(value, int):
        return Typed("int", (value, value))
    if isinstance(value, float):
        return Typed("float", (value, value))
    return Typed("string")


def _wrong(message: str) -> InvalidQuery:
    return InvalidQuery(message, code="wrong_type")


def _comparable(left: Typed, right: Typed, op: str) -> None:
    kinds = {left.type, right.type} - {"null"}
    if op in ("eq", "ne"):
        if kinds <= set(_NUMERIC) or kinds <= {"bool"} or kinds <= {*_TEXT, "string"}:
            return
        raise _wrong(f"Cannot compare {left.type} with {right.type} using {COMPARISONS[op]}.")
    if not kinds <= set(_NUMERIC):
        raise _wrong(f"'{COMPARISONS[op]}' compares numbers; got {left.type} and {right.type}.")


def _numeric(t: Typed, what: str) -> None:
    if t.type not in _NUMERIC:
        hint = " Cast it first: col(...).cast('int')." if t.type == "bool" else ""
        raise _wrong(f"{what} needs a number; got {t.type}.{hint}")


def _boolean(t: Typed, what: str) -> None:
    if t.type != "bool":
        raise _wrong(f"{what} needs a true/false expression; got {t.type}.")


def cut_labels(edges: list[float]) -> list[str]:
    """Polars' own labels for ``cut(edges)``, in order (public: computed from the edges only)."""
    probe = pl.DataFrame({"x": [float(e) for e in edges] + [math.inf]})
    return probe.select(pl.col("x").cut([float(e) for e in edges]).cast(pl.String))["x"].to_list()


def type_of(expr, env: dict[str, Typed], dataset: str) -> Typed:  # noqa: C901 - one case per operator
    """The public type, bounds and categories of ``expr``; refuses what the language cannot compile."""
    if isinstance(expr, ColumnRef):
        if expr.name not in env:
            raise unknown_column(expr.name, list(env), dataset)
        return env[expr.name]
    if isinstance(expr, Lit):
        return _literal_type(expr.value)
    if isinstance(expr, Binary):
        left, right = type_of(expr.left, env, dataset), type_of(expr.right, env, dataset)
        if expr.op in COMPARISONS:
            _comparable(left, right, expr.op)
            return Typed("bool", categories=(False, True))
        _numeric(left, f"'{ARITHMETIC[expr.op]}'"), _numeric(right, f"'{ARITHMETIC[expr.op]}'")
        kind = "int" if left.type == right.type == "int" and expr.op != "div" else "float"
        return Typed(kind)
    if isinstance(expr, Logical):
        for arg in expr.args:
            _boolean(type_of(arg, env, dataset), f"'{expr.op}'")
        return Typed("bool", categories=(False, True))
    return _type_of_call(expr, type_of(expr.arg, env, dataset))


def _type_of_call(expr, arg: Typed) -> Typed:  # noqa: C901 - one case per operator
    """The type of an operator applied to one typed argument (unary, is_in, between/clip, cut, fill_null, cast)."""
    if isinstance(expr, Unary):
        if expr.op == "not":
            _boolean(arg, "'not'")
        elif expr.op == "abs":
            _numeric(arg, "abs()")
            return Typed(arg.type)
        return Typed("bool", categories=(False, True))
    if isinstance(expr, IsIn):
        for value in expr.values:
            _comparable(arg, _literal_type(value), "eq")
        return Typed("bool", categories=(False, True))
    return _operator_type(expr, arg)


def _operator_type(expr, arg: Typed) -> Typed:
    """The type of a one-argument operator with parameters (between, clip, cut, fill_null, cast)."""
    if isinstance(expr, Between):
        _numeric(arg, f"{expr.op}()")
        if expr.low > expr.high:
            raise InvalidQuery(f"{expr.op}() needs low <= high; got {expr.low:g} > {expr.high:g}.",
                               code="bad_bounds")
        if expr.op == "between":
            return Typed("bool", categories=(False, True))
        lo, hi = (math.ceil(expr.low), math.floor(expr.high)) if arg.type == "int" else (expr.low, expr.high)
        if lo > hi:
            raise InvalidQuery("clip() bounds hold no integer.", code="bad_bounds")
        return Typed(arg.type, (lo, hi))
    if isinstance(expr, Cut):
        _numeric(arg, "cut()")
        if any(b <= a for a, b in zip(expr.edges, expr.edges[1:])):
            raise InvalidQuery("cut() edges must be strictly increasing.", code="bad_bounds")
        return Typed("category", categories=tuple(cut_labels(expr.edges)), cut=True)
    if isinstance(expr, FillNull):
        value = _literal_type(expr.value)
        if arg.type not in (*_NUMERIC, "bool") or value.type == "null":
            raise InvalidQuery(f"fill_null() fills numbers or booleans with a value; got {arg.type}.",
                               code="unsupported_operator")
        _comparable(arg, value, "eq")
        inside = arg.bounds is not None and arg.bounds[0] <= expr.value <= arg.bounds[1]
        return Typed(arg.type, arg.bounds if inside else None, arg.categories)
    assert isinstance(expr, Cast)
    if arg.type not in (*_NUMERIC, "bool"):
        raise InvalidQuery(f"cast() converts numbers and booleans; got {arg.type}.", code="unsupported_operator")
    if expr.to == "bool":
        return Typed("bool", categories=(False, True))
    bounds = (0, 1) if arg.type == "bool" else arg.bounds
    if bounds is not None and expr.to == "int":
        bounds = (math.trunc(bounds[0]), math.trunc(bounds[1]))
    return Typed(expr.to, bounds)


def environment(info: DatasetInfo, derive: list[Derived]) -> dict[str, Typed]:
    """Every column a query may name, with its public type: the dataset's, then the derived ones in order."""
    env = {c.name: _column_type(c) for c in info.columns}
    for d in derive:
        if d.name in env:
            raise InvalidQuery(f"Derived column '{d.name}' would replace an existing column; pick a new name.",
                               code="invalid_query")
        env[d.name] = type_of(d.expr, env, info.name)
    return env


def derived_schema(info: DatasetInfo, query: DPQuery) -> tuple[DatasetInfo, dict[str, Typed]]:
    """The public schema the query sees (derived columns appended) and every column's typing.

    Raises :class:`InvalidQuery` (``unknown_column``, ``wrong_type``, ``bad_bounds``,
    ``unsupported_operator``, ``query_too_large``) before anything is computed.
    """
    check_size(query)
    env = environment(info, query.derive)
    if query.where is not None:
        _boolean(type_of(query.where, env, info.name), "where / filter")
    extra = []
    for d in query.derive:
        t = env[d.name]
        kind = t.type if t.type in ("int", "float", "bool", "category") else "string"
        extra.append(ColumnInfo(name=d.name, type=kind, bounds=t.bounds,
                                categories=list(t.categories) if t.categories else None))
    if not extra:
        return info, env
    return info.model_copy(update={"columns": [*info.columns, *extra]}), env


# ----------------------------------------------------------------- compilation to Polars


@dataclass(frozen=True)
class Codes:
    """Category columns stored as codes into their public category list (see workbench.channels.dp.columnar)."""

    lists: dict[str, list]

    def literal(self, column: str, value) -> pl.Expr:
        labels = [str(v) for v in self.lists[column]]
        code = labels.index(str(value)) if str(value) in labels else len(labels)  # no row holds that code
        return pl.lit(code, dtype=pl.UInt32)


def _coded_column(expr, codes: Codes | None) -> str | None:
    if codes is not None and isinstance(expr, ColumnRef) and expr.name in codes.lists:
        return expr.name
    return None


def _equal(left, right, op: str, env: dict[str, Typed], codes: Codes | None) -> pl.Expr:
    """``==`` / ``!=``, comparing codes where a category column is stored as codes."""
    coded_l, coded_r = _coded_column(left, codes), _coded_column(right, codes)
    if coded_l and isinstance(right, Lit):
        lhs, rhs = pl.col(coded_l), codes.literal(coded_l, right.value)
    elif coded_r and isinstance(left, Lit):
        lhs, rhs = codes.literal(coded_r, left.value), pl.col(coded_r)
    else:
        lhs, rhs = to_polars(left, env, codes), to_polars(right, env, codes)
    return lhs == rhs if op == "eq" else lhs != rhs


def _lit(value) -> pl.Expr:
    return pl.lit(value)


def to_polars(expr, env: dict[str, Typed], codes: Codes | None = None) -> pl.Expr:  # noqa: C901
    """A Polars expression OpenDP 0.16 analyses, equivalent to ``expr`` (typed by :func:`type_of` first)."""
    if isinstance(expr, ColumnRef):
        return pl.col(expr.name)
    if isinstance(expr, Lit):
        return _lit(expr.value)
    if isinstance(expr, Binary):
        if expr.op in ("eq", "ne"):
            return _equal(expr.left, expr.right, expr.op, env, codes)
        left, right = to_polars(expr.left, env, codes), to_polars(expr.right, env, codes)
        return {"lt": left < right, "le": left <= right, "gt": left > right, "ge": left >= right,
                "add": left + right, "sub": left - right, "mul": left * right,
                "div": left / right}[expr.op]
    if isinstance(expr, Logical):
        parts = [to_polars(a, env, codes) for a in expr.args]
        out = parts[0]
        for part in parts[1:]:
            out = (out & part) if expr.op == "and" else (out | part)
        return out
    if isinstance(expr, IsIn):  # OpenDP refuses is_in: an or of equalities
        out = None
        for value in expr.values:
            part = _equal(expr.arg, Lit(op="lit", value=value), "eq", env, codes)
            out = part if out is None else (out | part)
        return out
    arg = to_polars(expr.arg, env, codes)
    if isinstance(expr, Unary):
        if expr.op == "not":
            return ~arg
        if expr.op == "is_null":
            return arg.is_null()
        dtype = pl.Int64 if type_of(expr.arg, env, "") .type == "int" else pl.Float64
        return arg * ((arg >= 0).cast(dtype) * 2 - 1)  # abs: OpenDP refuses .abs(), accepts a signed product
    if isinstance(expr, Between):
        if expr.op == "between":
            return (arg >= expr.low) & (arg <= expr.high)
        t = type_of(expr, env, "")
        return arg.clip(*t.bounds)
    if isinstance(expr, Cut):
        return arg.cut([float(e) for e in expr.edges])
    if isinstance(expr, FillNull):
        return arg.fill_null(_lit(expr.value))
    assert isinstance(expr, Cast)
    if expr.to == "bool":
        return arg != 0
    return arg.cast(pl.Int64 if expr.to == "int" else pl.Float64)


def derived_columns(query: DPQuery, env: dict[str, Typed], codes: Codes | None) -> list[pl.Expr]:
    """The ``with_columns`` expressions of a query's derived columns, in order."""
    return [to_polars(d.expr, env, codes).alias(d.name) for d in query.derive]


def referenced(expr) -> set[str]:
    """Column names an expression reads."""
    if isinstance(expr, ColumnRef):
        return {expr.name}
    return set().union(*(referenced(c) for c in children(expr))) if children(expr) else set()


def source_columns(info: DatasetInfo, query: DPQuery, used: list[str]) -> list[str]:
    """The dataset's own columns a query reads: those ``used`` directly and through its derived columns."""
    own = {c.name for c in info.columns}
    derived = {d.name: referenced(d.expr) for d in query.derive}
    wanted = set(used) | (referenced(query.where) if query.where is not None else set())
    out, stack = set(), list(wanted)
    while stack:
        name = stack.pop()
        if name in derived:
            stack.extend(derived.pop(name))
        elif name in own:
            out.add(name)
    return [c.name for c in info.columns if c.name in out]


# ----------------------------------------------------------------- canonical form (the identity of a question)


def _key(expr) -> str:
    return expr.model_dump_json()


def _norm_value(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def canonical_expr(expr):
    """One spelling for equivalent trees (commutative operands sorted, and/or flattened, literals on the right)."""
    if isinstance(expr, ColumnRef):
        return expr
    if isinstance(expr, Lit):
        return expr
    if isinstance(expr, Binary):
        left, right = canonical_expr(expr.left), canonical_expr(expr.right)
        op = expr.op
        if op in COMPARISONS:
            if isinstance(left, Lit) and not isinstance(right, Lit):
                left, right, op = right, left, _MIRROR[op]
            if isinstance(right, Lit):
                right = Lit(op="lit", value=_norm_value(right.value))
        if op in ("eq", "ne", "add", "mul") and not isinstance(right, Lit) and _key(right) < _key(left):
            left, right = right, left
        return Binary(op=op, left=left, right=right)
    if isinstance(expr, Logical):
        flat = []
        for arg in (canonical_expr(a) for a in expr.args):
            flat.extend(arg.args if isinstance(arg, Logical) and arg.op == expr.op else [arg])
        unique = {_key(a): a for a in flat}
        ordered = [unique[k] for k in sorted(unique)]
        return ordered[0] if len(ordered) == 1 else Logical(op=expr.op, args=ordered)
    arg = canonical_expr(expr.arg)
    if isinstance(expr, IsIn):
        values = sorted({repr(_norm_value(v)): _norm_value(v) for v in expr.values}.items())
        if len(values) == 1:
            return Binary(op="eq", left=arg, right=Lit(op="lit", value=values[0][1]))
        return IsIn(op="is_in", arg=arg, values=[v for _, v in values])
    return expr.model_copy(update={"arg": arg})


def canonical(query: DPQuery) -> DPQuery:
    """The query in its one canonical spelling (see the module docstring)."""
    where = canonical_expr(query.where) if query.where is not None else None
    if isinstance(where, Logical) and where.op == "and" and len(where.args) == 1:
        where = where.args[0]
    used = [n for n in [query.column, *query.by, *(query.columns or []),
                        *(s.column for s in query.aggs or [])] if n]
    if query.kind == "count" and not query.by:
        used = used or []
    needed = set(used) | (referenced(where) if where is not None else set())
    keep = []
    for d in reversed(query.derive):  # drop derived columns nothing reads
        if d.name in needed:
            keep.append(Derived(name=d.name, expr=canonical_expr(d.expr)))
            needed |= referenced(d.expr)
    update = {"where": where, "derive": list(reversed(keep))}
    if query.aggs:
        pairs = sorted(zip(query.aggs, query.weights or [1.0] * len(query.aggs)), key=lambda p: p[0].name)
        update["aggs"] = [_canonical_statistic(s) for s, _ in pairs]
        weights = [w for _, w in pairs]
        update["weights"] = None if len(set(weights)) <= 1 else [w / sum(weights) for w in weights]
    return query.model_copy(update=update)


def _canonical_statistic(statistic):
    if statistic.stat == "count":
        return statistic.model_copy(update={"column": None, "p": None})
    return statistic
