"""What previews and releases look like in the notebook."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from ..protocol import DPPreview, DPRelease

if TYPE_CHECKING:
    from .dataset import Query


class Preview:
    """The price of a DP query and its expected error, before anything is spent."""

    def __init__(self, body: DPPreview, query: "Query"):
        self.body, self.query = body, query

    @property
    def epsilon(self) -> float:
        return self.body.epsilon

    @property
    def delta(self) -> float:
        return self.body.delta

    @property
    def accuracy(self) -> pd.DataFrame:
        """Per statistic: the half-width of its (1 - alpha) interval (None where OpenDP gives none)."""
        return pd.DataFrame([a.model_dump() for a in self.body.accuracy])

    @property
    def would_replay(self) -> bool:
        return self.body.would_replay

    @property
    def budget_left_after(self) -> dict | None:
        b = self.body.budget_left_after
        return None if b is None else b.model_dump()

    def to_dict(self) -> dict:
        return self.body.model_dump(mode="json")

    def __repr__(self) -> str:
        parts = [f"epsilon={self.epsilon:g}"] + ([f"delta={self.delta:g}"] if self.delta else [])
        acc = ", ".join(f"{a.statistic} ±{a.accuracy:.4g}" if a.accuracy is not None else f"{a.statistic} ±?"
                        for a in self.body.accuracy)
        replay = " (already answered: free)" if self.would_replay else ""
        return f"<Preview {self.body.dataset} {self.query.spec.kind}: cost {' '.join(parts)}{replay}; 95% error {acc}>"

    def _repr_html_(self) -> str:
        from .display import preview_html

        return preview_html(self)


def release_frame(body: DPRelease) -> pd.DataFrame:
    """A released answer as a DataFrame; the release's facts ride along in ``df.attrs``."""
    frame = pd.DataFrame(body.table.data, columns=body.table.columns)
    frame.attrs.update({
        "dataset": body.dataset, "dataset_version": body.dataset_version, "kind": body.query.kind,
        "query": body.query.model_dump(mode="json", exclude_none=True), "release_id": body.release_id,
        "epsilon": body.epsilon, "delta": body.delta, "epsilon_charged": body.epsilon_charged,
        "delta_charged": body.delta_charged, "replayed": body.replayed, "grant_id": body.grant_id,
        "released_at": body.released_at.isoformat(), "alpha": body.alpha,
        "budget_left": None if body.budget_left is None else body.budget_left.model_dump(),
    })
    return frame
