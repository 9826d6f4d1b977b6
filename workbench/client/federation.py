"""A federation: one question asked of several nodes' same-named datasets.

The channels add their methods in their own modules (DP combination in
:mod:`workbench.channels.dp.federated`, HE secure sums and regression in
:mod:`workbench.channels.secagg`, federated learning in :mod:`workbench.channels.fl`); this module
only holds the nodes and checks that the datasets agree on their public schema.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import InvalidQuery, NotSupported
from ..protocol import DatasetInfo
from .connection import Node, connect
from . import habits
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


class FederatedDataset(habits.RowlessHandle):
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

    def __getattr__(self, name: str):
        """A pandas or Polars habit (``fds.head()``, ``fds.groupby``) or a typo: a clear error, see ``habits``."""
        if name.startswith("_") or name in ("federation", "handles"):
            raise AttributeError(name)
        raise self._unknown(name)

    def __repr__(self) -> str:
        return f"<FederatedDataset {self.name!r} on {len(self.handles)} nodes>"


def federation(nodes: Sequence[Node | str]) -> Federation:
    """A federation of nodes, given as :class:`Node` objects or URLs (tokens as in :func:`connect`)."""
    return Federation([n if isinstance(n, Node) else connect(n) for n in nodes])
