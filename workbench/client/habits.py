"""Clear answers to pandas and Polars habits on a remote handle.

A data scientist's first moves on a table (``ds.head()``, ``len(ds)``, ``ds.groupby``) are row-level or spelled
differently here. Each gets an error with a stable code that says why and what to ask instead, never a bare
``AttributeError``. The errors are still ``AttributeError`` subclasses, so ``hasattr`` and tools that probe
attributes behave as with any object.
"""

from __future__ import annotations

import difflib

from ..errors import InvalidQuery, PrivacyError
from ..protocol import DatasetInfo

# Methods that would show rows (or their order): rows never leave the node.
ROW_LEVEL = frozenset({
    "head", "tail", "sample", "sort", "sort_values", "iloc", "loc", "iat", "at", "iterrows", "itertuples",
    "iter_rows", "rows", "row", "to_numpy", "values", "to_dict", "to_dicts", "to_csv", "to_parquet", "to_arrow",
    "to_polars", "to_list", "collect", "show", "take", "limit", "nlargest", "nsmallest", "drop_duplicates",
    "unique", "first", "last", "slice", "glimpse", "fetch",
})
# pandas / Polars / SQL spellings of questions the handle asks another way.
SPELLINGS = {
    "groupby": "group_by('sex').mean('cost')",
    "query": "filter(col('age') >= 65)",
    "where": "filter(col('age') >= 65)",
    "select": "an aggregate: agg(n=wb.count(), cost=wb.mean('cost'))",
    "assign": "with_columns(cost_per_visit=(col('cost') / col('visits')).clip(0, 5000))",
    "value_counts": "histogram('sex') or group_by('sex').count()",
    "nunique": "the public categories in ds.schema; counts per category: histogram(column)",
    "n_unique": "the public categories in ds.schema; counts per category: histogram(column)",
    "size": "count()",
    "shape": "count() (the number of rows is private; the columns are ds.columns)",
    "dtypes": "ds.schema (names, types, public bounds and categories)",
    "info": "ds.schema (names, types, public bounds and categories)",
    "corrwith": "corr(['age', 'cost'])",
    "ols": "linear_regression(y='cost', x=['age', 'bmi'])",
    "glm": "linear_regression(...) or logistic_regression(...)",
    "quantiles": "quantile('age', 0.9) or agg(p90=wb.quantile('age', 0.9))",
    "percentile": "quantile('age', 0.9)",
    "stdev": "std('cost')",
    "variance": "var('cost')",
}


class RowsStayOnNode(PrivacyError, AttributeError):
    """A row-level method on a remote handle (``code = "privacy_violation"``)."""


class NotOnRemoteHandle(InvalidQuery, AttributeError):
    """A name that is neither a method nor a column of the handle (``code = "unknown_column"``, or
    ``"not_supported"`` for a pandas spelling of a question asked another way)."""


def row_level(what: str, info: DatasetInfo) -> RowsStayOnNode:
    if info.tier == "open":
        return RowsStayOnNode(f"{what} is not on a remote handle: '{info.name}' is open data, so read its rows "
                              "with ds.to_pandas() and use pandas on them.", code="privacy_violation")
    return RowsStayOnNode(
        f"{what} would show rows of '{info.name}', and its rows never leave the node. For fake rows with the same "
        "columns use ds.mock(); for the data's shape ask DP questions: ds.describe().release(epsilon=...), "
        "ds.count(), ds.histogram(column); or request synthetic data (ds.synthesize(...)).",
        code="privacy_violation")


def unknown_attribute(name: str, info: DatasetInfo, methods: list[str], columns: list[str]) -> AttributeError:
    """The error for ``ds.<name>`` when ``name`` is neither a method nor a column."""
    if name in ROW_LEVEL:
        return row_level(f"ds.{name}", info)
    if name in SPELLINGS:
        return NotOnRemoteHandle(f"A remote handle has no '{name}'; ask it as ds.{SPELLINGS[name]}.",
                                 code="not_supported")
    close = difflib.get_close_matches(name, methods + columns, n=3, cutoff=0.7)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return NotOnRemoteHandle(f"'{info.name}' has no method or column {name!r}.{hint} Columns: {', '.join(columns)}.",
                             code="unknown_column")


class RowlessHandle:
    """What every remote handle (single-node or federated, with a ``schema``) answers to row-level Python:
    ``len`` and iteration are refused with :func:`row_level`; truth never asks for the (private) row count."""

    schema: DatasetInfo

    def __len__(self) -> int:
        raise row_level("len(ds) (the exact row count)", self.schema)

    def __iter__(self):
        raise row_level("Iterating over ds", self.schema)

    def __bool__(self) -> bool:
        return True

    def _unknown(self, name: str, columns: list[str] | None = None) -> AttributeError:
        """The error for ``handle.<name>``; ``columns`` (default: the dataset's) are the names to suggest."""
        methods = [m for m in dir(type(self)) if not m.startswith("_")]
        return unknown_attribute(name, self.schema, methods, columns or [c.name for c in self.schema.columns])
