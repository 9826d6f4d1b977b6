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
    def text(self) -> str:
        """The question in readable form."""
        return self.body.text

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
        return f"<Preview {self.body.text or self.body.dataset}: cost {' '.join(parts)}{replay}; 95% error {acc}>"

    def _repr_html_(self) -> str:
        from .display import preview_html

        return preview_html(self)


#: Columns of a released table that are values, not interval ends that may be clamped.
_CLAMPED = ("estimate", "lower", "upper")


class _ResultPlot:
    """``result.plot()`` draws the estimate with its interval; ``result.plot.bar()`` etc. are pandas' own."""

    def __init__(self, frame: "Released"):
        self._frame = frame

    def __call__(self, *args, ax=None, title: str | None = None, **kwargs):
        """The estimate with its interval; with pandas' own arguments (``kind=``, ``x=``...), pandas' plot.

        A wide cross-tab is drawn from its long form (one bar per pair); standard errors are not bar labels.
        """
        frame = ResultAccessor(self._frame).long()
        if args or kwargs or not {"estimate", "coef"} & set(frame.columns):
            return pd.plotting.PlotAccessor(self._frame)(*args, ax=ax, title=title, **kwargs)
        from ..jupyter.widgets import plot_result

        frame = frame.drop(columns=[c for c in _EXTRA if c != "statistic" and c in frame.columns])
        frame.attrs = dict(self._frame.attrs)
        return plot_result(frame, ax=ax, title=title)

    def __getattr__(self, name: str):
        return getattr(pd.plotting.PlotAccessor(self._frame), name)


class Released(pd.DataFrame):
    """A released result: a pandas DataFrame plus ``.plot()`` (intervals as error bars) and ``.clamp()``.

    Its facts (dataset, epsilon charged, replayed, ...) ride along in ``df.attrs``.
    """

    _metadata: list[str] = []

    @property
    def _constructor(self):
        return Released

    @property
    def plot(self) -> _ResultPlot:  # type: ignore[override]
        """Draw the estimate with its interval as error bars (``.plot.bar()`` etc.: pandas' plots)."""
        return _ResultPlot(self)

    def clamp(self, lower: float | None = 0.0, upper: float | None = None) -> "Released":
        """A copy with ``estimate``, ``lower`` and ``upper`` clamped to ``[lower, upper]``.

        The node never clamps: a noisy count can be negative, and the raw noisy
        value is what makes the estimate unbiased. Clamping is post-processing,
        so it costs no privacy, and it keeps the interval's guarantee: when the
        true value lies in ``[lower, upper]`` (a count is never below 0) and in
        the interval, it also lies in the clamped interval.
        """
        out = self.copy()
        for name in _CLAMPED:
            if name in out.columns:
                out[name] = out[name].astype(float).clip(lower=lower, upper=upper)
        out.attrs["clamped"] = [lower, upper]
        return out


def as_released(frame: pd.DataFrame) -> Released:
    """``frame`` as a :class:`Released` result, with its ``attrs``."""
    out = Released(frame)
    out.attrs.update(frame.attrs)
    return out


def release_frame(body: DPRelease) -> Released:
    """A released answer as a DataFrame; the release's facts ride along in ``df.attrs``."""
    frame = Released(body.table.data, columns=body.table.columns)
    frame.attrs.update({
        "dataset": body.dataset, "dataset_version": body.dataset_version, "kind": body.query.kind,
        "query": body.query.model_dump(mode="json", exclude_none=True), "release_id": body.release_id,
        "epsilon": body.epsilon, "delta": body.delta, "epsilon_charged": body.epsilon_charged,
        "delta_charged": body.delta_charged, "replayed": body.replayed, "grant_id": body.grant_id,
        "released_at": body.released_at.isoformat(), "alpha": body.alpha,
        "budget_left": None if body.budget_left is None else body.budget_left.model_dump(),
        "text": body.text,
    })
    return frame


#: Columns of a result that are neither group keys nor the estimate and its interval.
_EXTRA = ("se", "se_sampling", "se_noise", "noisy_count", "statistic")


@pd.api.extensions.register_dataframe_accessor("wb")
class ResultAccessor:
    """``df.wb.plot()``: a released table's estimates with their intervals (matplotlib)."""

    def __init__(self, frame: pd.DataFrame):
        self._frame = frame

    def long(self) -> pd.DataFrame:
        """The table with one row per estimate (a wide cross-tab is stacked back)."""
        frame = self._frame
        if isinstance(frame.columns, pd.MultiIndex) and "estimate" in frame.columns.get_level_values(0):
            stacked = frame.stack(future_stack=True).reset_index()
            return stacked
        return frame

    def matrix(self) -> pd.DataFrame:
        """A correlation or covariance result as a square matrix of estimates."""
        frame = self._frame
        if not {"row", "column", "estimate"} <= set(frame.columns):
            raise ValueError("matrix() needs a correlation or covariance result (row, column, estimate).")
        order = list(dict.fromkeys(frame["row"]))
        return frame.pivot(index="row", columns="column", values="estimate").loc[order, order]

    def plot(self, title: str | None = None):
        """One panel per statistic: bars for the estimates, error bars for their 95% intervals.

        Privacy guarantee: draws an already released table; releases nothing.
        """
        import matplotlib.pyplot as plt

        from ..jupyter.widgets import plot_result

        frame = self.long()
        keys = [c for c in frame.columns if c not in (*_EXTRA, "estimate", "lower", "upper")]
        panels = list(frame.groupby("statistic", sort=False)) if "statistic" in frame.columns else [(None, frame)]
        fig, axes = plt.subplots(1, len(panels), figsize=(min(4.5 * len(panels), 16), 3.6), squeeze=False)
        for ax, (name, part) in zip(axes[0], panels):
            plot_result(part[[*keys, "estimate", "lower", "upper"]].reset_index(drop=True), ax=ax,
                        title=name if name is not None else None)
        fig.suptitle(title or self._frame.attrs.get("text") or "", fontsize=10)
        fig.tight_layout()
        return fig
