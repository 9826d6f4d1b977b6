"""A DP question in readable form, e.g. ``mean(cost) where age >= 65 by sex``.

Used by the notebook display, the preview widget and the node's release
records (the JupyterLab history shows it). Pure text from the spec: public.
"""

from __future__ import annotations

from workbench.protocol import Between, Binary, Cast, ColumnRef, Cut, DPQuery, FillNull, IsIn, Lit, Logical, Unary
from workbench.query.language import ARITHMETIC, COMPARISONS

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, **{k: 4 for k in COMPARISONS}, "add": 5, "sub": 5, "mul": 6, "div": 6}


def _value(value) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def expression(expr, outer: int = 0) -> str:  # noqa: C901 - one case per operator
    """``expr`` as infix text, parenthesised only where precedence needs it."""
    if isinstance(expr, ColumnRef):
        return expr.name
    if isinstance(expr, Lit):
        return _value(expr.value)
    if isinstance(expr, Binary):
        level = _PRECEDENCE[expr.op]
        symbol = COMPARISONS.get(expr.op) or ARITHMETIC[expr.op]
        text = f"{expression(expr.left, level)} {symbol} {expression(expr.right, level + 1)}"
    elif isinstance(expr, Logical):
        level = _PRECEDENCE[expr.op]
        text = f" {expr.op} ".join(expression(a, level + 1) for a in expr.args)
    elif isinstance(expr, Unary):
        if expr.op == "not" and isinstance(expr.arg, Unary) and expr.arg.op == "is_null":
            return f"{expression(expr.arg.arg, 4)} is not null"
        if expr.op == "not":
            level, text = 3, f"not {expression(expr.arg, 3)}"
        elif expr.op == "is_null":
            return f"{expression(expr.arg, 4)} is null"
        else:
            return f"abs({expression(expr.arg)})"
    elif isinstance(expr, IsIn):
        return f"{expression(expr.arg, 4)} in ({', '.join(_value(v) for v in expr.values)})"
    elif isinstance(expr, Between):
        if expr.op == "clip":
            return f"clip({expression(expr.arg)}, {_value(expr.low)}, {_value(expr.high)})"
        return f"{expression(expr.arg, 4)} between {_value(expr.low)} and {_value(expr.high)}"
    elif isinstance(expr, Cut):
        return f"cut({expression(expr.arg)}, [{', '.join(_value(e) for e in expr.edges)}])"
    elif isinstance(expr, FillNull):
        return f"fill_null({expression(expr.arg)}, {_value(expr.value)})"
    else:
        assert isinstance(expr, Cast)
        return f"{expr.to}({expression(expr.arg)})"
    return f"({text})" if level < outer else text


def _statistics(query: DPQuery) -> str:
    kind = query.kind
    if kind == "agg":
        parts = []
        for s in query.aggs:
            inner = s.column or "*"
            call = f"quantile({inner}, {s.p:g})" if s.stat == "quantile" else f"{s.stat}({inner})"
            parts.append(call if s.name == s.column or (s.stat == "count" and s.name in ("n", "count"))
                         else f"{s.name}={call}")
        return ", ".join(parts)
    if kind == "moments":
        return f"moments({', '.join(query.columns or [])})"
    if kind == "sql":
        return " ".join((query.sql or "").split())
    if kind == "count":
        return "count(*)"
    if kind == "quantile":
        return f"quantile({query.column}, {query.quantile:g})"
    if kind == "histogram":
        return f"histogram({query.column})"
    return f"{kind}({query.column})"


def readable(query: DPQuery) -> str:
    """One line: statistics, derived columns, filter and groups, e.g. ``mean(cost) where age >= 65 by sex``."""
    text = _statistics(query)
    if query.derive:
        text += " with " + ", ".join(f"{d.name} = {expression(d.expr)}" for d in query.derive)
    if query.where is not None:
        text += f" where {expression(query.where)}"
    if query.by:
        text += f" by {', '.join(query.by)}"
    return text
