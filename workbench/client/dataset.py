"""Remote dataset handles and DP queries built from them.

A :class:`RemoteDataset` holds the dataset's public metadata and nothing
else; every method builds a :class:`Query` (a JSON spec) that the node
compiles and answers. Nothing executable is sent.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pandas as pd

from ..errors import InvalidQuery, PrivacyError
from ..protocol import BudgetInfo, DatasetInfo, DPPreview, DPQuery, DPRelease, RowsResponse
from .results import Preview, release_frame

if TYPE_CHECKING:
    from .connection import Node


class RemoteDataset:
    """A handle to a dataset on a node. Holds no rows."""

    def __init__(self, node: "Node", info: DatasetInfo, grant_id: int | None = None):
        self.node = node
        self.schema = info
        self.grant_id = grant_id

    @property
    def name(self) -> str:
        return self.schema.name

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.schema.columns]

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

    def _query(self, **spec) -> "Query":
        return Query(self, DPQuery(**spec))

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
        """The ``p``-quantile of a numeric column, chosen among public candidates."""
        return self._query(kind="quantile", column=column, quantile=p)

    def median(self, column: str) -> "Query":
        return self.quantile(column, 0.5)

    def histogram(self, column: str, bins: int | list[float] | None = None) -> "Query":
        """Counts per bin (numeric: ``bins`` equal-width bins over the public bounds, or public edges) or per
        category (categorical columns)."""
        return self._query(kind="histogram", column=column, bins=bins)

    def group_by(self, *columns: str) -> "GroupBy":
        """Group by public keys (category columns) or, with a delta, by keys the node must not reveal."""
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
        return self.dataset._query(kind="quantile", column=column, quantile=p, by=self.by)

    def median(self, column: str) -> "Query":
        return self.quantile(column, 0.5)


class Query:
    """A DP question about one dataset: preview its price, then release it."""

    def __init__(self, dataset: RemoteDataset, spec: DPQuery):
        self.dataset, self.spec = dataset, spec

    def _body(self, epsilon: float, delta: float, request_id: str | None = None) -> dict:
        body = {"query": self.spec.model_dump(mode="json", exclude_none=True), "epsilon": epsilon, "delta": delta}
        if self.dataset.grant_id is not None:
            body["grant_id"] = self.dataset.grant_id
        if request_id is not None:
            body["request_id"] = request_id
        return body

    def preview(self, epsilon: float, delta: float = 0.0) -> Preview:
        """The privacy cost and expected error (95% interval half-widths). Spends nothing."""
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/dp/preview"), json=self._body(epsilon, delta))
        return Preview(DPPreview.model_validate(raw), self)

    def release(self, epsilon: float, delta: float = 0.0) -> pd.DataFrame:
        """Release the DP answer as a DataFrame (``estimate``, ``lower``, ``upper``), charging your grant.

        Asking the identical question again returns the stored answer for free
        (``df.attrs["replayed"]`` is True). Retries after a dropped connection
        reuse one request id, so they are never charged twice.

        Privacy guarantee: (epsilon, delta)-DP for the dataset's privacy unit,
        enforced by the node with OpenDP; intervals are post-processing.
        """
        request_id = uuid.uuid4().hex
        raw = self.dataset.node.request("POST", self.dataset.endpoint("/dp/release"),
                                        json=self._body(epsilon, delta, request_id), retries=3)
        return release_frame(DPRelease.model_validate(raw))

    def widget(self):
        """An ipywidgets preview with an epsilon slider (spends nothing)."""
        from ..jupyter.widgets import preview_widget

        return preview_widget(self)

    def __repr__(self) -> str:
        spec = self.spec.model_dump(exclude_none=True, exclude_defaults=True)
        return f"<Query {self.dataset.name}: {spec}>"
