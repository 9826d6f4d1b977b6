"""A federation: one question asked of several nodes' same-named datasets.

The channels add their methods in their own modules (DP combination in
:mod:`workbench.federated_dp`, HE secure sums and regression in
:mod:`workbench.he`, federated learning in :mod:`workbench.fl`); this module
only holds the nodes and checks that the datasets agree on their public schema.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InvalidQuery, NotSupported
from ..protocol import DatasetInfo
from .connection import Node, connect
from .dataset import RemoteDataset


class Federation:
    """Several nodes addressed together. Create with :func:`workbench.federation`."""

    def __init__(self, nodes: Sequence[Node]):
        if not nodes:
            raise InvalidQuery("A federation needs at least one node.", code="invalid_query")
        self.nodes = list(nodes)

    def dataset(self, name: str, *, purpose: str | None = None) -> "FederatedDataset":
        """Handles to ``name`` on every node; their public schemas must agree."""
        handles = [node.dataset(name, purpose=purpose) for node in self.nodes]
        check_same_schema(handles)
        return FederatedDataset(self, handles)

    def __repr__(self) -> str:
        return f"<Federation of {len(self.nodes)} nodes: {', '.join(n.url for n in self.nodes)}>"


def _shape(info: DatasetInfo) -> list:
    return [(c.name, c.type, c.bounds, tuple(c.categories) if c.categories else None) for c in info.columns]


def check_same_schema(handles: list[RemoteDataset]) -> None:
    """Refuse a federation whose datasets differ in columns, types, bounds or categories."""
    first = handles[0]
    for other in handles[1:]:
        if _shape(other.schema) != _shape(first.schema):
            mine = {c[0]: c for c in _shape(first.schema)}
            theirs = {c[0]: c for c in _shape(other.schema)}
            differing = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
            raise InvalidQuery(
                f"Dataset '{first.name}' differs between {first.node.url} and {other.node.url} "
                f"in columns {differing}; a federated question needs the same public schema everywhere.",
                code="schema_mismatch")


class FederatedDataset:
    """The same-named dataset on every node of a federation. Holds no rows."""

    def __init__(self, federation: Federation, handles: list[RemoteDataset]):
        self.federation = federation
        self.handles = handles

    @property
    def name(self) -> str:
        return self.handles[0].name

    @property
    def schema(self) -> DatasetInfo:
        return self.handles[0].schema

    def budget(self) -> dict[str, dict]:
        """Each node's remaining budget for your grant, by node URL."""
        return {h.node.url: h.budget() for h in self.handles}

    # ---------------------------------------------------------------- filters and derived columns (new handles)

    def filter(self, condition) -> "FederatedDataset":
        """The same filter on every node (a new federated handle); see :meth:`RemoteDataset.filter`."""
        return FederatedDataset(self.federation, [h.filter(condition) for h in self.handles])

    def with_columns(self, **columns) -> "FederatedDataset":
        """The same derived columns on every node (a new federated handle)."""
        return FederatedDataset(self.federation, [h.with_columns(**columns) for h in self.handles])

    def __getitem__(self, condition) -> "FederatedDataset":
        return self.filter(condition)

    def _whole(self, what: str) -> None:
        """Channels that read whole datasets refuse a filtered or derived handle rather than ignore it."""
        first = self.handles[0]
        if first._where is not None or first._derive:
            raise NotSupported(f"{what} reads the whole dataset: it does not take filters or derived columns.",
                               code="not_supported")

    # ---------------------------------------------------------------- federated DP (workbench.federated_dp)

    def count(self):
        """Rows over every node: a federated query (``.preview(epsilon)``, ``.release(epsilon)``)."""
        from ..federated_dp import federated_query

        return federated_query(self, kind="count")

    def sum(self, column: str):
        """Sum of a column over every node (values clipped to the public bounds)."""
        from ..federated_dp import federated_query

        return federated_query(self, kind="sum", column=column)

    def mean(self, column: str):
        """Pooled mean: summed noisy sums over summed noisy counts."""
        from ..federated_dp import federated_query

        return federated_query(self, kind="mean", column=column)

    def quantile(self, column: str, p: float):
        """Pooled ``p``-quantile, read off a federated histogram over the public bounds."""
        from ..federated_dp import federated_quantile

        return federated_quantile(self, column, p)

    def median(self, column: str):
        return self.quantile(column, 0.5)

    def histogram(self, column: str, bins: int | list[float] | None = None):
        """Counts per bin or category, summed over every node."""
        from ..federated_dp import federated_query

        return federated_query(self, kind="histogram", column=column, bins=bins)

    def agg(self, weights=None, **statistics):
        """Counts, sums and means over every node in one release per node, e.g.
        ``fed.dataset("patients").filter(col("age") >= 65).agg(n=wb.count(), cost=wb.mean("cost"))``."""
        from ..federated_dp import federated_agg

        return federated_agg(self, [], statistics, weights)

    def group_by(self, *columns: str):
        """Counts, sums and means per group over every node."""
        from ..federated_dp import FederatedGroupBy

        if not columns:
            raise InvalidQuery("group_by needs at least one column.", code="invalid_query")
        return FederatedGroupBy(self, list(columns))

    # ---------------------------------------------------------------- secure aggregation (workbench.he)

    def secure_sum(self, columns: list[str] | str, epsilon: float, **options):
        """Noisy totals computed under encryption (``protocol="he"``) or secret sharing (``protocol="smpc"``):
        only the total is revealed (see :func:`workbench.he.client.secure_sum`)."""
        self._whole("secure_sum")
        from ..he.client import secure_sum

        return secure_sum(self, columns, epsilon, **options)

    def linear_regression(self, y: str, x: list[str] | str, epsilon: float, **options):
        """Federated OLS from encrypted, DP-noised X'X and X'y (see :func:`workbench.he.client.linear_regression`)."""
        self._whole("linear_regression")
        from ..he.client import linear_regression

        return linear_regression(self, y, x, epsilon, **options)

    def evaluate(self, weights, intercept: float | None = None, *, y: str, x: list[str] | str | None = None,
                 metric: str = "sse", epsilon: float, **options):
        """A model's total and mean loss over every node, its weights encrypted (see :func:`workbench.he.evaluate.evaluate`)."""
        self._whole("evaluate")
        from ..he.evaluate import evaluate

        return evaluate(self, weights, intercept, y=y, x=x, metric=metric, epsilon=epsilon, **options)

    # ---------------------------------------------------------------- federated learning (workbench.fl)

    def train(self, model: str, y: str, x: list[str], **options):
        """Train a built-in model with Flower; only DP-noised updates leave a node (:func:`workbench.fl.client.train`)."""
        self._whole("train")
        from ..fl.client import train

        return train(self, model, y, x, **options)

    def __repr__(self) -> str:
        return f"<FederatedDataset {self.name!r} on {len(self.handles)} nodes>"


def federation(nodes: Sequence[Node | str]) -> Federation:
    """A federation of nodes, given as :class:`Node` objects or URLs (tokens as in :func:`connect`)."""
    return Federation([n if isinstance(n, Node) else connect(n) for n in nodes])
