"""Analyst SQL, parsed on the node with sqlglot into the same whitelisted plan as ``ds.agg``.

One ``SELECT`` over the dataset (addressed by its catalogue name), with
``WHERE`` and ``GROUP BY``; the select list holds the group-by columns and
aggregates (``COUNT(*)``, ``SUM``, ``AVG``, ``VARIANCE``/``VAR_POP``/``VAR_SAMP``,
``STDDEV``/``STDDEV_POP``/``STDDEV_SAMP``, ``MEDIAN``,
``PERCENTILE_CONT(p) WITHIN GROUP (ORDER BY x)``). Expressions map one to one
onto the expression trees of :mod:`workbench.protocol`
(``LEAST(GREATEST(x, lo), hi)`` is a clip, ``COALESCE(x, v)`` a fill_null,
``CASE`` is not supported). Anything else (joins, sub-queries, windows, CTEs,
``UNION``, ``SELECT *``, ``HAVING``, ``ORDER BY``, ``LIMIT``, ``DISTINCT``,
unknown functions) is refused with a message naming the construct. The SQL
text itself never reaches an SQL engine: only the compiled spec runs.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, TokenError

from workbench.errors import InvalidQuery
from workbench.protocol import DPQuery

_CMP = {exp.EQ: "eq", exp.NEQ: "ne", exp.LT: "lt", exp.LTE: "le", exp.GT: "gt", exp.GTE: "ge"}
_ARITH = {exp.Add: "add", exp.Sub: "sub", exp.Mul: "mul", exp.Div: "div"}
_AGG = {exp.Sum: "sum", exp.Avg: "mean", exp.Variance: "var", exp.VariancePop: "var", exp.Stddev: "std",
        exp.StddevPop: "std", exp.StddevSamp: "std", exp.Median: "quantile"}
_REFUSED = [(exp.Join, "JOIN"), (exp.Window, "window functions (OVER)"), (exp.With, "WITH (CTE)"),
            (exp.Subquery, "sub-queries"), (exp.Union, "UNION"), (exp.Intersect, "INTERSECT"),
            (exp.Except, "EXCEPT"), (exp.Having, "HAVING"), (exp.Order, "ORDER BY"), (exp.Limit, "LIMIT"),
            (exp.Distinct, "DISTINCT"), (exp.Lateral, "LATERAL"), (exp.Case, "CASE"), (exp.Anonymous, None)]


def refuse(construct: str) -> InvalidQuery:
    return InvalidQuery(f"SQL construct not supported: {construct}. A DP SQL question is one SELECT of "
                        "aggregates FROM the dataset, with WHERE and GROUP BY.", code="unsupported_sql",
                        details={"construct": construct})


def _parse(text: str) -> exp.Select:
    try:
        statements = [s for s in sqlglot.parse(text, read="postgres") if s is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0][:300]
        raise InvalidQuery(f"The SQL does not parse: {first}", code="bad_sql") from None
    if len(statements) != 1:
        raise refuse("several statements" if statements else "an empty statement")
    select = statements[0]
    if not isinstance(select, exp.Select):
        raise refuse(type(select).__name__.upper())
    for node in select.walk():
        if isinstance(node, exp.Select) and node is not select:
            raise refuse("sub-queries")
        for kind, name in _REFUSED:
            if isinstance(node, kind) and not (kind is exp.Order and isinstance(node.parent, exp.WithinGroup)):
                raise refuse(name or f"function {node.name.upper()}()")
    return select


def _literal(node):
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return node.this
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
        return -_literal(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        number = float(node.this)
        return int(number) if number.is_integer() and "." not in node.this and "e" not in node.this.lower() \
            else number
    raise refuse(f"'{node.sql()}' where a constant was expected")


def _is_literal(node) -> bool:
    return isinstance(node, (exp.Literal, exp.Null, exp.Boolean)) or (
        isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal))


def expression(node) -> dict:  # noqa: C901 - one case per SQL construct
    """A sqlglot expression as a protocol expression tree (a dict)."""
    if isinstance(node, exp.Paren):
        return expression(node.this)
    if isinstance(node, exp.Column):
        if node.table:
            raise refuse(f"qualified column '{node.sql()}'")
        return {"op": "col", "name": node.name}
    if _is_literal(node):
        return {"op": "lit", "value": _literal(node)}
    for kind, op in {**_CMP, **_ARITH}.items():
        if type(node) is kind:
            return {"op": op, "left": expression(node.this), "right": expression(node.expression)}
    if isinstance(node, (exp.And, exp.Or)):
        return {"op": "and" if isinstance(node, exp.And) else "or",
                "args": [expression(node.this), expression(node.expression)]}
    if isinstance(node, exp.Not):
        return {"op": "not", "arg": expression(node.this)}
    if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
        test = {"op": "is_null", "arg": expression(node.this)}
        return {"op": "not", "arg": test} if node.args.get("negate") else test
    if isinstance(node, exp.In):
        if node.args.get("query") is not None:
            raise refuse("sub-queries")
        return {"op": "is_in", "arg": expression(node.this), "values": [_literal(v) for v in node.expressions]}
    if isinstance(node, exp.Between):
        return {"op": "between", "arg": expression(node.this), "low": _literal(node.args["low"]),
                "high": _literal(node.args["high"])}
    if isinstance(node, exp.Abs):
        return {"op": "abs", "arg": expression(node.this)}
    if isinstance(node, exp.Coalesce) and len(node.expressions) == 1 and _is_literal(node.expressions[0]):
        return {"op": "fill_null", "arg": expression(node.this), "value": _literal(node.expressions[0])}
    if isinstance(node, exp.Cast):
        target = node.to.this.name.lower() if hasattr(node.to.this, "name") else str(node.to.this).lower()
        to = {"int": "int", "bigint": "int", "integer": "int", "smallint": "int", "double": "float",
              "float": "float", "real": "float", "decimal": "float", "boolean": "bool"}.get(target)
        if to is None:
            raise refuse(f"CAST to {node.to.sql()}")
        return {"op": "cast", "arg": expression(node.this), "to": to}
    clip = _clip(node)
    if clip is not None:
        return clip
    raise refuse(f"'{node.sql()}'")


def _clip(node) -> dict | None:
    """``LEAST(GREATEST(x, lo), hi)`` or ``GREATEST(LEAST(x, hi), lo)``: a clip of x to [lo, hi]."""
    if not isinstance(node, (exp.Least, exp.Greatest)) or len(node.expressions) != 1:
        return None
    inner, outer_bound = node.this, node.expressions[0]
    other = exp.Greatest if isinstance(node, exp.Least) else exp.Least
    if not (isinstance(inner, other) and len(inner.expressions) == 1 and _is_literal(outer_bound)
            and _is_literal(inner.expressions[0])):
        return None
    bound_a, bound_b = _literal(inner.expressions[0]), _literal(outer_bound)
    low, high = (bound_a, bound_b) if isinstance(node, exp.Least) else (bound_b, bound_a)
    return {"op": "clip", "arg": expression(inner.this), "low": low, "high": high}


def _statistic(node, name: str, derive: list[dict]) -> dict:
    """One aggregate of the select list as a protocol statistic (an expression argument becomes derived)."""
    if isinstance(node, exp.Count):
        if not isinstance(node.this, exp.Star):
            raise refuse("COUNT(column) or COUNT(DISTINCT ...): use COUNT(*) with WHERE column IS NOT NULL")
        return {"name": name, "stat": "count"}
    if isinstance(node, exp.WithinGroup) and isinstance(node.this, (exp.PercentileCont, exp.PercentileDisc)):
        order = node.expression.expressions
        if len(order) != 1:
            raise refuse("PERCENTILE_CONT without one ORDER BY column")
        p = _literal(node.this.this)
        if not isinstance(p, (int, float)) or not 0 < p < 1:
            raise InvalidQuery("A percentile must be strictly between 0 and 1.", code="bad_quantile")
        return {"name": name, "stat": "quantile", "column": _argument(order[0].this, name, derive), "p": p}
    stat = _AGG.get(type(node))
    if stat is None:
        raise refuse(f"aggregate {node.sql()}" if isinstance(node, exp.AggFunc) else f"'{node.sql()}'")
    out = {"name": name, "stat": stat, "column": _argument(node.this, name, derive)}
    if stat == "quantile":
        out["p"] = 0.5
    return out


def _argument(node, name: str, derive: list[dict]) -> str:
    if isinstance(node, exp.Column) and not node.table:
        return node.name
    derive.append({"name": f"{name}_value", "expr": expression(node)})
    return f"{name}_value"


def compile_sql(text: str, dataset: str) -> DPQuery:
    """The ``agg`` query an SQL string asks (refusing what the language cannot express)."""
    select = _parse(text)
    tables = list(select.find_all(exp.Table))
    if len(tables) != 1 or tables[0].name != dataset or tables[0].db:
        named = ", ".join(t.sql() for t in tables) or "no table"
        raise InvalidQuery(f"The SQL must read FROM {dataset} (this dataset's catalogue name); it reads {named}.",
                           code="bad_sql")
    by = []
    for key in select.args.get("group").expressions if select.args.get("group") else []:
        if not isinstance(key, exp.Column) or key.table:
            raise refuse(f"GROUP BY {key.sql()} (group by plain columns)")
        by.append(key.name)
    derive: list[dict] = []
    aggs = []
    for item in select.expressions:
        name = item.alias_or_name if isinstance(item, exp.Alias) else None
        node = item.this if isinstance(item, exp.Alias) else item
        if isinstance(node, exp.Star):
            raise refuse("SELECT * (rows never leave the node)")
        if isinstance(node, exp.Column):
            if node.name not in by:
                raise refuse(f"column {node.name} in the select list without GROUP BY {node.name}")
            continue
        default = f"{type(node).__name__.lower()}_{node.this.name}" if isinstance(getattr(node, "this", None),
                                                                                     exp.Column) else None
        aggs.append(_statistic(node, name or default or f"stat{len(aggs) + 1}", derive))
    if not aggs:
        raise InvalidQuery("The SQL selects no aggregate (COUNT(*), SUM, AVG, ...).", code="bad_sql")
    where = select.args.get("where")
    spec = {"kind": "agg", "by": by, "aggs": aggs, "derive": derive,
            "where": expression(where.this) if where is not None else None}
    from pydantic import ValidationError

    try:
        return DPQuery.model_validate(spec)
    except ValidationError as exc:
        raise InvalidQuery(f"The SQL compiles to an invalid question: {exc.errors()[0]['msg']}",
                           code="bad_sql") from None
