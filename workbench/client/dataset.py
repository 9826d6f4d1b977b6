"""Remote dataset handles and DP queries built from them.

A :class:`RemoteDataset` holds the dataset's public metadata and nothing
else; every method builds a :class:`Query` (a JSON spec) that the node
compiles and answers. Nothing executable is sent.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pandas as pd

from ..errors import BudgetExceeded, InvalidQuery, PrivacyError
from ..protocol import BudgetInfo, DatasetInfo, DPPreview, DPQuery, DPRelease, RowsResponse
from .expressions import Expr, Stat, check_p, col
from . import checks, habits
from .results import Preview, release_frame

if TYPE_CHECKING:
    from .connection import Node


class RemoteDataset(habits.RowlessHandle):
    """A handle to a dataset on a node. Holds no rows."""

    def __init__(self, node: "Node", info: DatasetInfo, grant_id: int | None = None, *,
                 where: dict | None = None, derive: tuple = ()):
        self.node = node
        self.schema = info
        self.grant_id = grant_id
        self._where = where  # the filter's expression tree (None: every row)
        self._derive = tuple(derive)  # ({"name": ..., "expr": ...}, ...) in order

    # ---------------------------------------------------------------- filters and derived columns (new handles)

    def _with(self, where: dict | None, derive: tuple) -> "RemoteDataset":
        handle = RemoteDataset(self.node, self.schema, self.grant_id, where=where, derive=derive)
        handle._spec(kind="count")  # type-checks the new filter and derived columns now, before any request
        return handle

    def filter(self, condition: Expr) -> "RemoteDataset":
        """A new handle keeping the rows where ``condition`` holds (chains: filters combine with AND).

        Every query on it is a DP query on the kept rows; which group keys are released never depends on it.
        """
        if not isinstance(condition, Expr):
            raise InvalidQuery("filter() takes an expression, e.g. ds.filter(col('age') >= 65).",
                               code="invalid_query")
        where = condition.tree if self._where is None else {"op": "and", "args": [self._where, condition.tree]}
        return self._with(where, self._derive)

    def with_columns(self, **columns: Expr) -> "RemoteDataset":
        """A new handle with derived columns, e.g. ``band=col("age").cut([18, 40, 65])``.

        A derived number used in a sum or mean needs public bounds: ``clip`` it.
        """
        derive = list(self._derive)
        for name, expr in columns.items():
            if not isinstance(expr, Expr):
                expr = Expr({"op": "lit", "value": expr}) if isinstance(expr, (int, float, bool, str)) else expr
            if not isinstance(expr, Expr):
                raise InvalidQuery(f"with_columns({name}=...) takes an expression.", code="invalid_query")
            derive.append({"name": name, "expr": expr.tree})
        return self._with(self._where, tuple(derive))

    def __getitem__(self, key):
        """``ds[condition]`` filters; ``ds["age"]`` is ``col("age")``."""
        if isinstance(key, Expr):
            return self.filter(key)
        if isinstance(key, str):
            return self.column(key)
        raise InvalidQuery("ds[...] takes a condition or a column name.", code="invalid_query")

    def __getattr__(self, name: str) -> Expr:
        """``ds.age`` is ``col("age")`` for the dataset's (and derived) column names."""
        if name.startswith("_") or name in ("node", "schema", "grant_id"):
            raise AttributeError(name)
        if name in self.columns:
            return col(name)
        raise self._unknown(name, self.columns)  # derived columns too

    def column(self, name: str) -> Expr:
        """``col(name)``, checked against the dataset's columns (with a "did you mean")."""
        if name not in self.columns:
            from ..query.language import unknown_column

            raise unknown_column(name, self.columns, self.name)
        return col(name)

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def columns(self) -> list[str]:
        """The dataset's columns, then this handle's derived ones."""
        return [c.name for c in self.schema.columns] + [d["name"] for d in self._derive]

    def endpoint(self, suffix: str = "") -> str:
        """This dataset's path on its node, plus ``suffix`` (what channels send their requests to)."""
        from .connection import _quote

        return f"/datasets/{_quote(self.name)}{suffix}"

    def budget(self) -> dict:
        """What your grant on this dataset has left: ``{"epsilon": ..., "delta": ...}`` plus details."""
        params = {"grant_id": self.grant_id} if self.grant_id else None
        info = BudgetInfo.model_validate(self.node.request("GET", self.endpoint("/budget"), params=params))
        return {"epsilon": info.epsilon_left, "delta": info.delta_left, "grant_id": info.grant_id,
                "purpose": info.purpose, "epsilon_spent": info.epsilon_spent, "delta_spent": info.delta_spent,
                "dataset_epsilon_left": info.dataset_epsilon_left}

    # ---------------------------------------------------------------- queries

    def _spec(self, **spec) -> DPQuery:
        """The wire spec of a question on this handle, validated and type-checked here (no request)."""
        if self._where is not None:
            spec["where"] = self._where
        if self._derive:
            spec["derive"] = list(self._derive)
        query = checks.dp_query(**spec)
        if query.kind != "sql":
            from ..query.language import derived_schema, unknown_column

            info, _ = derived_schema(self.schema, query)
            known = [c.name for c in info.columns]
            for name in ([query.column] if query.column else []) + list(query.by):
                if name not in known:  # refused at the line that asked, with "did you mean"
                    raise unknown_column(name, known, self.name)
        return query

    def _query(self, **spec) -> "Query":
        return Query(self, self._spec(**spec))

    def agg(self, weights: list[float] | dict[str, float] | None = None, **statistics: Stat) -> "Query":
        """Several statistics in ONE release, at one price split evenly (or by ``weights``), e.g.
        ``ds.agg(n=wb.count(), cost=wb.mean("cost"), p90=wb.quantile("age", 0.9))``."""
        return self._query(**_agg_spec(statistics, weights))

    def sql(self, query: str) -> "Query":
        """A DP question in SQL: ``SELECT sex, AVG(cost) AS cost FROM <dataset> WHERE ... GROUP BY sex``.

        Parsed on the node (and checked here first) into the same plan as :meth:`agg`; joins, sub-queries,
        windows, CTEs, UNION and ``SELECT *`` are refused.
        """
        if self._where is not None or self._derive:
            raise InvalidQuery("ds.sql() reads the whole dataset: put the filter in its WHERE clause.",
                               code="invalid_query")
        if not isinstance(query, str):
            raise InvalidQuery("ds.sql() takes an SQL string.", code="bad_sql")
        from ..query.sql import compile_sql

        compile_sql(query, self.name)  # refuses here what the node would refuse
        return self._query(kind="sql", sql=query)

    # ---------------------------------------------------------------- analyses (workbench.client.analyses)

    def crosstab(self, row: str, column: str) -> "Query":
        """Counts of every (row, column) pair of public categories: a wide table with intervals per cell."""
        from .analyses import Crosstab

        return Crosstab(self, self._spec(kind="count", by=[row, column]))

    def corr(self, columns: list[str]) -> "Query":
        """The correlation matrix of bounded numeric columns, from noisy sums of bounded products."""
        from .analyses import Moments

        return Moments(self, self._spec(kind="moments", columns=list(columns)), "corr")

    def cov(self, columns: list[str]) -> "Query":
        """The covariance matrix of bounded numeric columns, from noisy sums of bounded products."""
        from .analyses import Moments

        return Moments(self, self._spec(kind="moments", columns=list(columns)), "cov")

    def linear_regression(self, y: str, x: list[str] | str) -> "Query":
        """Ordinary least squares of ``y`` on ``x`` (with an intercept) from noisy sufficient statistics:
        coefficients, standard errors including the DP noise, 95% intervals."""
        from .analyses import Moments

        xs = [x] if isinstance(x, str) else list(x)
        return Moments(self, self._spec(kind="moments", columns=[*xs, y]), "ols", y=y, x=xs)

    def logistic_regression(self, y: str, x: list[str] | str):
        """Logistic regression on this node through the federated-learning channel (DP-SGD with its
        accountant): ``.release(epsilon, delta, rounds=5)`` returns the coefficients."""
        from .analyses import LogisticRegression

        return LogisticRegression(self, y, [x] if isinstance(x, str) else list(x))

    def describe(self, epsilon: float | None = None, delta: float = 0.0):
        """Every bounded numeric column summarised (count, mean, std, median) in ONE release at ``epsilon``.
        Without ``epsilon``, the query (to preview first)."""
        numeric = [c.name for c in self.schema.columns if c.type in ("int", "float") and c.bounds is not None]
        numeric += [d["name"] for d in self._derive if _bounded(self, d["name"])]
        statistics = {"n": Stat("count")}
        for name in numeric:
            statistics.update({f"{name}_mean": Stat("mean", name), f"{name}_std": Stat("std", name),
                               f"{name}_median": Stat("quantile", name, 0.5)})
        query = self.agg(**statistics)
        return query if epsilon is None else query.release(epsilon, delta)

    def count(self) -> "Query":
        """Number of rows."""
        return self._query(kind="count")

    def sum(self, column: str) -> "Query":
        """Sum of a numeric column, each value clipped to its public bounds."""
        return self._query(kind="sum", column=column)

    def mean(self, column: str) -> "Query":
        """Mean of a numeric column (noisy sum / noisy count)."""
        return self._query(kind="mean", column=column)

    def quantile(self, column: str, p: float) -> "Query":
        """The ``p``-quantile of a bounded numeric column, with a 95% interval (a one-statistic :meth:`agg`:
        read off a noisy histogram, see docs/queries.md)."""
        return self.agg(**{column: Stat("quantile", column, check_p(p))})

    def var(self, column: str) -> "Query":
        """The variance of a bounded numeric column (a one-statistic :meth:`agg`)."""
        return self.agg(**{f"var_{column}": Stat("var", column)})

    def std(self, column: str) -> "Query":
        """The standard deviation of a bounded numeric column (a one-statistic :meth:`agg`)."""
        return self.agg(**{f"std_{column}": Stat("std", column)})

    def median(self, column: str) -> "Query":
        return self.quantile(column, 0.5)

    def histogram(self, column: str, bins: int | list[float] | None = None) -> "Query":
        """Counts per bin (numeric: ``bins`` equal-width bins over the public bounds, or public edges) or per
        category (categorical columns)."""
        return self._query(kind="histogram", column=column, bins=bins)

    def group_by(self, *columns: str) -> "GroupBy":
        """Group by public keys (category columns) or, with a delta, by keys the node must not reveal."""
        if len(columns) == 1 and isinstance(columns[0], (list, tuple)):
            columns = tuple(columns[0])  # group_by(["a", "b"]) means group_by("a", "b")
        if not columns:
            raise InvalidQuery("group_by needs at least one column.", code="invalid_query")
        return GroupBy(self, list(columns))

    # ---------------------------------------------------------------- governance

    def request_access(self, purpose: str, epsilon: float, delta: float = 0.0, note: str = "",
                       expires_days: float | None = None) -> dict:
        """Ask this dataset's owners for a grant; see its status in ``node.requests()``."""
        body = {"purpose": purpose, "epsilon": epsilon, "delta": delta, "note": note}
        if expires_days is not None:
            body["expires_days"] = expires_days
        return self.node.request("POST", self.endpoint("/requests"), json=body)

    def explain(self, epsilon: float, delta: float = 0.0) -> pd.DataFrame:
        """Why a release at this price would be allowed or refused, check by check (spends nothing)."""
        params = {"dataset": self.name, "epsilon": epsilon, "delta": delta}
        if self.grant_id is not None:
            params["grant_id"] = self.grant_id
        body = self.node.request("GET", "/permissions/explain", params=params)
        frame = pd.DataFrame(body["checks"])
        frame.attrs.update({"allowed": body["allowed"], "code": body["code"]})
        return frame

    # ---------------------------------------------------------------- raw rows (open tier only)

    def to_pandas(self, limit: int = 1_000_000) -> pd.DataFrame:
        """The rows of an open-tier dataset (``df.attrs["licence"]`` names its licence).

        Any other tier raises :class:`workbench.PrivacyError`: rows never leave the node.
        """
        if self.schema.tier != "open":
            raise PrivacyError(f"'{self.name}' is a {self.schema.tier} dataset: its rows never leave the node. "
                               "Ask a DP question (count, mean, ...) or request synthetic data instead.",
                               code="privacy_violation")
        body = RowsResponse.model_validate(self.node.request("GET", self.endpoint("/rows"), params={"limit": limit}))
        frame = pd.DataFrame(body.table.data, columns=body.table.columns)
        frame.attrs.update({"dataset": body.dataset, "licence": body.licence, "dataset_version": body.dataset_version})
        return frame

    def __repr__(self) -> str:
        return f"<RemoteDataset {self.name!r} ({self.schema.tier}, {len(self.schema.columns)} columns) on {self.node!r}>"

    def _repr_html_(self) -> str:
        from .display import dataset_html

        return dataset_html(self)


class GroupBy:
    """Aggregates per group; build with :meth:`RemoteDataset.group_by`."""

    def __init__(self, dataset: RemoteDataset, by: list[str]):
        self.dataset, self.by = dataset, by

    def count(self) -> "Query":
        return self.dataset._query(kind="count", by=self.by)

    def sum(self, column: str) -> "Query":
        return self.dataset._query(kind="sum", column=column, by=self.by)

    def mean(self, column: str) -> "Query":
        return self.dataset._query(kind="mean", column=column, by=self.by)

    def quantile(self, column: str, p: float) -> "Query":
        return self.agg(**{column: Stat("quantile", column, check_p(p))})

    def var(self, column: str) -> "Query":
        return self.agg(**{f"var_{column}": Stat("var", column)})

    def std(self, column: str) -> "Query":
        return self.agg(**{f"std_{column}": Stat("std", column)})

    def agg(self, weights: list[float] | dict[str, float] | None = None, **statistics: Stat) -> "Query":
        """Several statistics per group in ONE release (see :meth:`RemoteDataset.agg`)."""
        return self.dataset._query(by=self.by, **_agg_spec(statistics, weights))

    def median(self, column: str) -> "Query":
        return self.quantile(column, 0.5)


class Query:
    """A DP question about one dataset: preview its price, then release it.

    ``epsilon`` may be replaced by ``accuracy=``: the least epsilon whose widest stated 95% half-width is
    at most that (``q.preview(accuracy=50)`` shows it, free; ``q.release(accuracy=50)`` spends it).
    """

    def __init__(self, dataset: RemoteDataset, spec: DPQuery):
        self.dataset, self.spec = dataset, spec

    @property
    def text(self) -> str:
        """The question in readable form, e.g. ``mean(cost) where age >= 65 by sex``."""
        from ..query.text import readable

        return readable(self.spec)

    def _checked(self, epsilon: Any, delta: Any) -> tuple[float, float]:
        """Refuse here, before any request, what the node would refuse before charging."""
        epsilon, delta = checks.privacy_loss(epsilon, delta)
        from ..query.language import canonical
        from ..query.validate import validate
        from ..query.sql import compile_sql

        spec = compile_sql(self.spec.sql, self.dataset.name) if self.spec.kind == "sql" else self.spec
        validate(self.dataset.schema, canonical(spec), delta)
        return epsilon, delta

    def _body(self, epsilon: float, delta: float, request_id: str | None = None) -> dict:
        query = self.spec.model_dump(mode="json", exclude_none=True)
        if not query.get("derive"):
            query.pop("derive", None)  # older nodes know no derived columns
        body = {"query": query, "epsilon": epsilon, "delta": delta}
        if self.dataset.grant_id is not None:
            body["grant_id"] = self.dataset.grant_id
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def _preview(self, epsilon: float, delta: float) -> Preview:
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/dp/preview"), json=self._body(epsilon, delta))
        return Preview(DPPreview.model_validate(raw), self)

    def preview(self, epsilon: float | None = None, delta: float = 0.0, *, accuracy: float | None = None) -> Preview:
        """The privacy cost and expected error (95% interval half-widths, each statistic's share). Spends
        nothing. With ``accuracy=`` instead of ``epsilon``: the preview at the least epsilon reaching it."""
        if accuracy is not None:
            return self._for_accuracy(accuracy, epsilon, delta)
        epsilon, delta = self._checked(epsilon, delta)
        return self._preview(epsilon, delta)

    def _for_accuracy(self, accuracy: Any, epsilon: Any, delta: Any) -> Preview:
        from .accuracy import least_epsilon

        if epsilon is not None:
            raise InvalidQuery("Give epsilon or accuracy, not both.", code="bad_epsilon")
        checks.privacy_loss(1.0, delta)
        return least_epsilon(self, accuracy, delta)

    def release(self, epsilon: float | None = None, delta: float = 0.0, *,
                accuracy: float | None = None) -> pd.DataFrame:
        """Release the DP answer as a DataFrame (``estimate``, ``lower``, ``upper``), charging your grant.

        Asking the identical question again (in any spelling: field order, operand order, SQL
        whitespace) returns the stored answer for free (``df.attrs["replayed"]`` is True). Retries
        after a dropped connection reuse one request id, so they are never charged twice.
        ``df.wb.plot()`` draws the estimates with their intervals.

        Privacy guarantee: (epsilon, delta)-DP for the dataset's privacy unit,
        enforced by the node with OpenDP; intervals are post-processing.
        """
        if accuracy is not None:
            found = self._for_accuracy(accuracy, epsilon, delta)
            epsilon, delta = found.epsilon, found.delta
        epsilon, delta = self._checked(epsilon, delta)
        request_id = uuid.uuid4().hex
        body = self._body(epsilon, delta, request_id)
        try:
            raw = self.dataset.node.request("POST", self.dataset.endpoint("/dp/release"), json=body, retries=3)
        except BudgetExceeded as exc:
            raise checks.budget_hint(exc, self.dataset.name) from None
        return release_frame(DPRelease.model_validate(raw))

    def widget(self):
        """An ipywidgets preview with an epsilon slider (spends nothing)."""
        from ..jupyter.widgets import preview_widget

        return preview_widget(self)

    def __repr__(self) -> str:
        return f"<Query {self.dataset.name}: {self.text}>"


def _agg_spec(statistics: dict[str, Stat], weights) -> dict:
    if not statistics:
        raise InvalidQuery("agg() needs at least one statistic, e.g. n=wb.count().", code="invalid_query")
    for name, stat in statistics.items():
        if not isinstance(stat, Stat):
            raise InvalidQuery(f"agg({name}=...) takes a statistic such as wb.mean('cost').", code="invalid_query")
    spec = {"kind": "agg", "aggs": [stat.spec(name) for name, stat in statistics.items()]}
    if isinstance(weights, dict):
        unknown = set(weights) - set(statistics)
        if unknown:
            raise InvalidQuery(f"weights name unknown statistics: {sorted(unknown)}.", code="invalid_query")
        weights = [weights.get(name, 1.0) for name in statistics]
    if weights is not None:
        spec["weights"] = list(weights)
    return spec


def _bounded(ds: RemoteDataset, name: str) -> bool:
    from ..query.language import derived_schema

    info, _ = derived_schema(ds.schema, ds._spec(kind="count"))
    column = info.column(name)
    return column is not None and column.type in ("int", "float") and column.bounds is not None
