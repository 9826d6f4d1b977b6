"""Notebook widgets for Workbench results.

* :func:`preview_widget` — an epsilon slider over ``query.preview(epsilon=e)``:
  see the expected error of a query at each privacy cost before spending any.
* :func:`plot_result` — a bar chart with error bars of a released table.

Both import ipywidgets / matplotlib only when called, so this module imports
anywhere (no display, no kernel, no widget front end needed).

Privacy guarantee: neither function releases anything. ``preview`` is
computed by the node from public metadata only (schema, bounds, epsilon) and
spends no budget; :func:`plot_result` draws a table that was already released.
"""

from __future__ import annotations

import math
from html import escape as html_escape
from typing import Any

__all__ = ["accuracy_table", "plot_result", "preview_widget"]

#: Columns of a released DP table that are not group keys.
VALUE_COLUMNS = ("estimate", "lower", "upper")


def accuracy_table(preview: Any) -> Any:
    """The expected-error table of a preview, as a pandas DataFrame.

    Accepts what ``query.preview()`` returns: the client's ``Preview``
    (``to_dict()``), a ``DPPreview`` model, a dict with an ``accuracy`` list of
    ``{statistic, accuracy, alpha}``, a DataFrame (returned as is), or anything
    else (shown as one row).
    """
    import pandas as pd

    if isinstance(preview, pd.DataFrame):
        return preview
    if hasattr(preview, "to_pandas"):
        return preview.to_pandas()
    data = _as_dict(preview)
    if isinstance(data, dict) and isinstance(data.get("accuracy"), list):
        frame = pd.DataFrame(data["accuracy"])
        if "alpha" in frame and "accuracy" in frame:
            # "accuracy" is the half-width of a (1 - alpha) interval.
            frame["confidence"] = [f"{(1 - a):.0%}" if a is not None else "" for a in frame["alpha"]]
            frame = frame.rename(columns={"accuracy": "± error", "share": "share of ε"})
            if "share of ε" in frame and frame["share of ε"].isna().all():
                frame = frame.drop(columns="share of ε")
            frame = frame[[c for c in ("statistic", "± error", "confidence", "share of ε") if c in frame]]
        return frame
    if isinstance(data, dict):
        return pd.DataFrame([data])
    return pd.DataFrame({"preview": [repr(preview)]})


def _as_dict(preview: Any) -> Any:
    """The preview as plain data: ``Preview.to_dict()``, a model's dump, or itself."""
    if hasattr(preview, "model_dump"):
        return preview.model_dump(mode="json")
    to_dict = getattr(preview, "to_dict", None)
    if callable(to_dict):
        try:
            return to_dict()
        except TypeError:
            pass
    return preview


def _budget_note(preview: Any) -> str:
    data = _as_dict(preview)
    if not isinstance(data, dict):
        return ""
    parts = []
    left = data.get("budget_left_after")
    if isinstance(left, dict) and left.get("epsilon") is not None:
        parts.append(f"ε left after this release: {left['epsilon']:.4g}")
    if data.get("would_replay"):
        parts.append("same query already released: it would be replayed at no cost")
    if data.get("note"):
        parts.append(str(data["note"]))
    return " · ".join(parts)


def preview_widget(
    query: Any,
    *,
    epsilon: float = 1.0,
    min_epsilon: float = 0.01,
    max_epsilon: float = 10.0,
) -> Any:
    """An ipywidgets ``VBox``: an epsilon slider and the expected error.

    Moving the slider calls ``query.preview(epsilon=e)`` — computed by the
    node from public metadata, it spends no budget — and shows the expected
    error table (± error at the stated confidence). Errors (node down, not
    authenticated, budget) are shown as text in the widget.

    Privacy guarantee: nothing is released and no budget is spent.
    """
    import ipywidgets as widgets

    if not min_epsilon > 0 or not max_epsilon > min_epsilon:
        raise ValueError("need 0 < min_epsilon < max_epsilon")
    epsilon = min(max(epsilon, min_epsilon), max_epsilon)
    slider = widgets.FloatLogSlider(
        value=epsilon,
        base=10,
        min=math.log10(min_epsilon),
        max=math.log10(max_epsilon),
        step=0.05,
        description="ε",
        readout_format=".3g",
        continuous_update=False,
        layout=widgets.Layout(width="420px"),
    )
    # HTML widgets (not an Output capture): they render without a kernel
    # round-trip and are kept in the notebook's saved widget state.
    table = widgets.HTML(value="")
    note = widgets.HTML(value="")
    text = getattr(query, "text", "")
    question = f"<div>question: <code>{html_escape(text)}</code></div>" if text else ""

    def show(e: float) -> None:
        import html

        try:
            preview = query.preview(epsilon=e)
        except Exception as error:  # WorkbenchError and friends: say it, do not blank
            code = getattr(error, "code", type(error).__name__)
            note.value = (
                f"<span style='color: var(--jp-error-color1)'><b>{html.escape(str(code))}</b>: "
                f"{html.escape(str(error))}</span>"
            )
            table.value = ""
            return
        note.value = question + html.escape(_budget_note(preview) or "Preview only: nothing released, "
                                                                          "no budget spent.")
        table.value = accuracy_table(preview).to_html(index=False, float_format=lambda x: f"{x:.4g}", border=0)

    slider.observe(lambda change: show(change["new"]), names="value")
    show(slider.value)
    box = widgets.VBox([slider, table, note])
    box.add_class("workbench-preview")
    return box


def _to_pandas(df: Any) -> Any:
    import pandas as pd

    if isinstance(df, pd.DataFrame):
        return df
    if hasattr(df, "to_pandas"):
        return df.to_pandas()
    return pd.DataFrame(df)


def plot_result(df: Any, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw a released table: bars for ``estimate``, error bars ``lower``–``upper``.

    ``df`` has columns ``estimate`` and optionally ``lower`` / ``upper`` (the
    confidence interval); every other column is a group key, and the bars
    are labelled with the keys. Returns the matplotlib ``Axes``.

    Privacy guarantee: draws an already released table; releases nothing.
    """
    frame = _to_pandas(df)
    if "estimate" not in frame.columns:
        raise ValueError(f"plot_result needs an 'estimate' column; got {list(frame.columns)}")
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.6 * len(frame) + 2)), 3.5))

    groups = [c for c in frame.columns if c not in VALUE_COLUMNS]
    if groups:
        labels = [" / ".join(str(v) for v in row) for row in frame[groups].itertuples(index=False)]
    elif len(frame) == 1:
        labels = ["estimate"]
    else:
        labels = [str(i) for i in frame.index]

    estimate = frame["estimate"].astype(float).to_numpy()
    positions = list(range(len(frame)))
    yerr = None
    if "lower" in frame.columns and "upper" in frame.columns:
        lower = frame["lower"].astype(float).to_numpy()
        upper = frame["upper"].astype(float).to_numpy()
        below = [e - lo if math.isfinite(lo) else 0.0 for e, lo in zip(estimate, lower)]
        above = [hi - e if math.isfinite(hi) else 0.0 for e, hi in zip(estimate, upper)]
        yerr = [[max(0.0, b) for b in below], [max(0.0, a) for a in above]]

    ax.bar(positions, estimate, color="#4c78a8", alpha=0.85, label="estimate")
    if yerr is not None:
        ax.errorbar(positions, estimate, yerr=yerr, fmt="none", ecolor="#333333", capsize=4, label="interval")
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    if groups:
        ax.set_xlabel(" / ".join(groups))
    ax.set_ylabel("estimate")
    if title:
        ax.set_title(title)
    ax.axhline(0, color="#999999", linewidth=0.8)
    return ax
