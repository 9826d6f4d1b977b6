"""Build DP query expressions with Python operators: ``(col("age") >= 65) & (col("sex") == "F")``.

An :class:`Expr` is a JSON tree (see the expression models in
:mod:`workbench.protocol`); nothing executable is built or sent. Statistics
for ``ds.agg(...)``: :func:`count`, :func:`sum`, :func:`mean`, :func:`var`,
:func:`std`, :func:`quantile`, :func:`median`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from ..errors import InvalidQuery

__all__ = ["Expr", "Stat", "col", "count", "lit", "mean", "median", "quantile", "std", "sum", "var"]


def _unsupported(what: str) -> InvalidQuery:
    return InvalidQuery(f"{what} is not part of the DP query language (see docs/queries.md).",
                        code="unsupported_operator")


def _value(value: Any) -> Any:
    """A literal a tree may hold: None, bool, int, finite float or short string."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float) or hasattr(value, "__float__"):
        number = float(value)
        if not math.isfinite(number):
            raise InvalidQuery("A literal must be a finite number (got NaN or infinity).", code="invalid_query")
        return int(number) if isinstance(value, int) else number
    raise _unsupported(f"A literal of type {type(value).__name__}")


def _tree(value: Any) -> dict:
    return value.tree if isinstance(value, Expr) else {"op": "lit", "value": _value(value)}


def _refused(op: str):
    def method(self, *_args):
        raise _unsupported(f"The operator {op}")
    return method


class Expr:
    """An expression over a dataset's columns; combine with ``& | ~``, comparisons and ``+ - * /``."""

    __slots__ = ("tree",)

    def __init__(self, tree: dict):
        self.tree = tree

    def _binary(self, op: str, other: Any, reverse: bool = False) -> "Expr":
        left, right = (_tree(other), self.tree) if reverse else (self.tree, _tree(other))
        return Expr({"op": op, "left": left, "right": right})

    # comparisons
    def __eq__(self, other):  # type: ignore[override]
        return self._binary("eq", other)

    def __ne__(self, other):  # type: ignore[override]
        return self._binary("ne", other)

    def __lt__(self, other):
        return self._binary("lt", other)

    def __le__(self, other):
        return self._binary("le", other)

    def __gt__(self, other):
        return self._binary("gt", other)

    def __ge__(self, other):
        return self._binary("ge", other)

    __hash__ = None  # type: ignore[assignment]

    # logic
    def __and__(self, other):
        return Expr({"op": "and", "args": [self.tree, _tree(other)]})

    def __rand__(self, other):
        return Expr({"op": "and", "args": [_tree(other), self.tree]})

    def __or__(self, other):
        return Expr({"op": "or", "args": [self.tree, _tree(other)]})

    def __ror__(self, other):
        return Expr({"op": "or", "args": [_tree(other), self.tree]})

    def __invert__(self):
        return Expr({"op": "not", "arg": self.tree})

    def __bool__(self):
        raise InvalidQuery("Combine conditions with & | ~ (not 'and', 'or', 'not'), and parenthesise "
                           "comparisons: (col('age') >= 65) & (col('sex') == 'F').", code="unsupported_operator")

    # arithmetic
    def __add__(self, other):
        return self._binary("add", other)

    def __radd__(self, other):
        return self._binary("add", other, reverse=True)

    def __sub__(self, other):
        return self._binary("sub", other)

    def __rsub__(self, other):
        return self._binary("sub", other, reverse=True)

    def __mul__(self, other):
        return self._binary("mul", other)

    def __rmul__(self, other):
        return self._binary("mul", other, reverse=True)

    def __truediv__(self, other):
        return self._binary("div", other)

    def __rtruediv__(self, other):
        return self._binary("div", other, reverse=True)

    def __neg__(self):
        return self._binary("sub", 0, reverse=True)

    def __abs__(self):
        return self.abs()

    def __pow__(self, power):
        """``x ** n`` for a whole n from 1 to 4, as a product (OpenDP analyses products, not powers)."""
        if not isinstance(power, int) or isinstance(power, bool) or not 1 <= power <= 4:
            raise _unsupported(f"'** {power!r}' (only whole powers 1 to 4)")
        out = self
        for _ in range(power - 1):
            out = out * self
        return out

    __floordiv__ = __rfloordiv__ = _refused("//")
    __mod__ = __rmod__ = _refused("%")
    __rpow__ = _refused("** with a column as the power")
    __xor__ = __rxor__ = _refused("^ (use (a | b) & ~(a & b))")

    # methods
    def is_in(self, values: Iterable) -> "Expr":
        values = [_value(v) for v in values]
        if not values:
            raise InvalidQuery("is_in() needs at least one value.", code="invalid_query")
        return Expr({"op": "is_in", "arg": self.tree, "values": values})

    def between(self, low: float, high: float) -> "Expr":
        """``low <= x <= high``."""
        return Expr({"op": "between", "arg": self.tree, "low": _value(low), "high": _value(high)})

    def is_null(self) -> "Expr":
        return Expr({"op": "is_null", "arg": self.tree})

    def is_not_null(self) -> "Expr":
        return ~self.is_null()

    def abs(self) -> "Expr":
        return Expr({"op": "abs", "arg": self.tree})

    def clip(self, low: float, high: float) -> "Expr":
        """Values limited to [low, high]: these become the derived column's public bounds."""
        return Expr({"op": "clip", "arg": self.tree, "low": _value(low), "high": _value(high)})

    def cut(self, edges: Iterable[float]) -> "Expr":
        """Bins at public edges, labelled ``(-inf, e1]``, ``(e1, e2]``, ..., ``(ek, inf]`` (public keys)."""
        return Expr({"op": "cut", "arg": self.tree, "edges": [_value(e) for e in edges]})

    def fill_null(self, value: Any) -> "Expr":
        return Expr({"op": "fill_null", "arg": self.tree, "value": _value(value)})

    def cast(self, to: str | type) -> "Expr":
        """``"int"``, ``"float"`` or ``"bool"`` (or the Python types; a boolean cast to a number is 0/1, with
        bounds [0, 1])."""
        to = {int: "int", float: "float", bool: "bool"}.get(to, to) if isinstance(to, type) else to
        if to not in ("int", "float", "bool"):
            raise _unsupported(f"cast to {to!r}")
        return Expr({"op": "cast", "arg": self.tree, "to": to})

    def __repr__(self) -> str:
        from ..query.text import expression
        from ..protocol import Derived

        try:
            return f"<Expr {expression(Derived(name='x', expr=self.tree).expr)}>"
        except Exception:  # noqa: BLE001 - a malformed tree still prints
            return f"<Expr {self.tree}>"


def col(name: str) -> Expr:
    """A column of the dataset (or a derived column) by name."""
    if not isinstance(name, str):
        raise InvalidQuery(f"col() takes a column name; got {type(name).__name__}.", code="invalid_query")
    return Expr({"op": "col", "name": name})


def lit(value: Any) -> Expr:
    return Expr({"op": "lit", "value": _value(value)})


# ----------------------------------------------------------------- statistics for agg()


@dataclass(frozen=True)
class Stat:
    """One statistic of ``ds.agg(name=...)``."""

    stat: str
    column: str | None = None
    p: float | None = None

    def spec(self, name: str) -> dict:
        out = {"name": name, "stat": self.stat}
        if self.column is not None:
            out["column"] = self.column
        if self.p is not None:
            out["p"] = self.p
        return out


def _column_name(column) -> str:
    if isinstance(column, Expr) and column.tree.get("op") == "col":
        return column.tree["name"]
    if isinstance(column, str):
        return column
    raise InvalidQuery("A statistic takes a column name; derive an expression first with "
                       "ds.with_columns(name=expr).", code="invalid_query")


def check_p(p: Any) -> float:
    """A quantile level strictly between 0 and 1 (else ``bad_quantile``)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < float(p) < 1:
        raise InvalidQuery(f"A quantile must be strictly between 0 and 1; got {p!r}.", code="bad_quantile")
    return float(p)


def count() -> Stat:
    """The number of rows (after any filter)."""
    return Stat("count")


def sum(column) -> Stat:  # noqa: A001 - the statistic's name
    """The sum of a bounded numeric column."""
    return Stat("sum", _column_name(column))


def mean(column) -> Stat:
    return Stat("mean", _column_name(column))


def var(column) -> Stat:
    """The (population) variance of a bounded numeric column."""
    return Stat("var", _column_name(column))


def std(column) -> Stat:
    return Stat("std", _column_name(column))


def quantile(column, p: float) -> Stat:
    return Stat("quantile", _column_name(column), check_p(p))


def median(column) -> Stat:
    return quantile(column, 0.5)

