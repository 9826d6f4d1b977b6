"""Checks of a DP question in the notebook, before anything is sent.

The node stays the judge: it validates every request again. These checks
only make a mistake read as a :class:`workbench.InvalidQuery` with a stable
code, raised at the line that made it, instead of a bare ``ValueError`` or a
pydantic ``ValidationError`` that escapes ``except wb.WorkbenchError``. They
use the node's own rules (the wire models in :mod:`workbench.protocol`, and the
handle calls :func:`workbench.channels.dp.worker.validate`, which reads public metadata
only), so there is no second copy of a check to drift.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from pydantic import ValidationError

from ..errors import BudgetExceeded, InvalidQuery
from ..protocol import DPQuery

__all__ = ["budget_hint", "dp_query", "invalid", "privacy_loss"]


def privacy_loss(epsilon: Any, delta: Any = 0.0) -> tuple[float, float]:
    """``(epsilon, delta)`` as floats, or :class:`InvalidQuery` (``bad_epsilon``).

    A string, a bool, NaN or infinity is refused (pydantic would turn ``"0.5"``
    into 0.5 without a word); the ranges are the node's (``DPRequest``).
    """
    from ..protocol import DPRequest

    for name, value in (("epsilon", epsilon), ("delta", delta)):
        if isinstance(value, bool) or not isinstance(value, Real):
            raise InvalidQuery(f"{name} must be a number, not {type(value).__name__} {value!r}.", code="bad_epsilon")
        if not math.isfinite(float(value)):
            raise InvalidQuery(f"{name} must be a finite number, not {value!r}.", code="bad_epsilon")
    values = {"epsilon": float(epsilon), "delta": float(delta)}
    try:
        DPRequest(query=DPQuery(kind="count"), **values)
    except ValidationError as exc:
        field = str(exc.errors()[0]["loc"][0])
        rule = _rule(DPRequest.model_fields[field].metadata)
        raise InvalidQuery(f"{field} = {values[field]:g} is out of range{rule}.", code="bad_epsilon") from None
    return values["epsilon"], values["delta"]


def _rule(metadata: list) -> str:
    parts = []
    for item in metadata:
        for attr, sign in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
            value = getattr(item, attr, None)
            if value is not None:
                parts.append(f"{sign} {value:g}")
    return f" (it must be {' and '.join(parts)})" if parts else ""


def _one_name(value: Any, role: str) -> str:
    """A column named by one string (a list means one question per column)."""
    if isinstance(value, (list, tuple)):
        raise InvalidQuery(f"The {role} is one column name (a string), not a {type(value).__name__} {list(value)!r}; "
                           "ask one question per column.", code="invalid_query")
    if not isinstance(value, str):
        raise InvalidQuery(f"The {role} is a column name (a string), not {type(value).__name__} {value!r}.",
                           code="invalid_query")
    return value


def invalid(exc: ValidationError) -> InvalidQuery:
    """A pydantic refusal of a spec, as the workbench error a user reads."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    code = "bad_quantile" if where.endswith(("quantile", ".p")) else "invalid_query"
    return InvalidQuery(f"Invalid question ({where}): {first.get('msg')} (got {first.get('input')!r}).", code=code)


def dp_query(**spec: Any) -> DPQuery:
    """The wire spec of a question, its shape checked (one column name per role, ``quantile`` in (0, 1)).

    Column names are checked against the public schema (with "did you mean") by the node's own typing,
    :func:`workbench.query.language.derived_schema`, which knows the handle's derived columns too."""
    if spec.get("column") is not None:
        spec["column"] = _one_name(spec["column"], "column")
    if spec.get("by"):
        spec["by"] = [_one_name(b, "group-by column") for b in spec["by"]]
    try:
        return DPQuery.model_validate(spec)
    except ValidationError as exc:
        raise invalid(exc) from None


def budget_hint(exc: BudgetExceeded, dataset: str) -> BudgetExceeded:
    """``exc`` with what the analyst can do about it (ask for a grant, or the dataset's cap is spent)."""
    if exc.code == "budget_exceeded" and "request_access" not in exc.message:
        exc.message += (f" Nothing was charged. To ask the owner for more: "
                        f"node.dataset({dataset!r}).request_access(purpose=..., epsilon=...).")
    elif exc.code == "dataset_budget_exceeded" and "cap" not in exc.message:
        exc.message += " Nothing was charged. This is the dataset's cap for all analysts: no grant can raise it."
    exc.args = (exc.message,)
    return exc
