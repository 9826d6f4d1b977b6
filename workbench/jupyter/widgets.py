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

#: Columns of a released table that are values, intervals or facts, never group keys.
VALUE_COLUMNS = ("estimate", "lower", "upper", "coef", "std_err", "dp_std_err", "noisy_count", "nodes_reporting",
                 "bin_lower", "bin_upper")


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
            # Unrounded: a mean's two statistics are each at 97.5% (so that its interval holds at 95%).
            frame["confidence"] = [f"{(1 - a) * 100:g}%" if a is not None else "" for a in frame["alpha"]]
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
    slider = widgets.FloatLogSlider(value=epsilon, base=10, min=math.log10(min_epsilon), max=math.log10(max_epsilon),
                                    step=0.05, description="ε", readout_format=".3g", continuous_update=False,
                                    layout=widgets.Layout(width="420px"))
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


def value_label(attrs: dict) -> str:
    """What the estimate is, from the release's facts: "mean of cost", "count", "coefficient"."""
    query = attrs.get("query") or {}
    kind = attrs.get("kind") or query.get("kind")
    column = query.get("column")
    if kind in ("linear_regression", "logistic_regression"):
        return f"coefficient (y = {attrs.get('y', '?')})"
    if kind in ("corr", "cov"):
        return {"corr": "correlation", "cov": "covariance"}[kind]
    if kind == "secure_sum":
        return "secure total"
    if kind in ("count", "histogram"):
        return "count"
    if kind == "quantile" and query.get("quantile") is not None:
        return _of(_quantile_name(float(query["quantile"])), column)
    aggs = query.get("aggs") or []
    if kind == "agg" and len(aggs) == 1:  # one statistic (ds.median(...) is one): say which
        stat = aggs[0].get("stat")
        name = _quantile_name(float(aggs[0]["p"])) if stat == "quantile" and aggs[0].get("p") is not None else stat
        return "count" if stat == "count" else _of(str(name), aggs[0].get("column"))
    if kind and column:
        return f"{kind} of {column}"
    return "estimate" if kind in (None, "agg") else str(kind)


def _quantile_name(p: float) -> str:
    return "median" if p == 0.5 else f"{p:g}-quantile"


def _of(name: str, column: str | None) -> str:
    return f"{name} of {column}" if column else name


def _interval_errors(frame: Any, value: Any) -> Any:
    """Error-bar lengths below and above each value from ``lower``/``upper`` (None if there are none)."""
    if "lower" not in frame.columns or "upper" not in frame.columns:
        return None
    lower = frame["lower"].astype(float).to_numpy()
    upper = frame["upper"].astype(float).to_numpy()
    if not any(math.isfinite(v) for v in (*lower, *upper)):
        return None  # no interval was released (e.g. a DP-SGD model's coefficients): no error bars, no legend
    below = [max(0.0, e - lo) if math.isfinite(lo) and math.isfinite(e) else 0.0 for e, lo in zip(value, lower)]
    above = [max(0.0, hi - e) if math.isfinite(hi) and math.isfinite(e) else 0.0 for e, hi in zip(value, upper)]
    return [below, above]


def _labels(frame: Any) -> tuple[list[str], str]:
    """Bar labels and the x-axis title: the group keys, the index (regression terms), or the row."""
    groups = [c for c in frame.columns if c not in VALUE_COLUMNS]
    if "statistic" in groups and frame["statistic"].nunique() == 1:  # one statistic: the y label names it
        groups.remove("statistic")
    if groups:
        labels = [" / ".join(str(v) for v in row) for row in frame[groups].itertuples(index=False)]
        return labels, " / ".join(groups)
    if frame.index.name or len(frame) > 1:
        return [str(i) for i in frame.index], str(frame.index.name or "")
    return [""], ""


def plot_result(df: Any, ax: Any = None, *, title: str | None = None) -> Any:
    """Draw a released result with its interval as error bars; returns the matplotlib ``Axes``.

    The value is ``estimate`` (DP queries, secure sums) or ``coef``
    (regressions); the error bars run from ``lower`` to ``upper`` (the
    release's interval, e.g. 95%). Bars are labelled by the group columns
    (or the index, e.g. regression terms); a numeric histogram is drawn over
    its public bin edges (``bin_lower``/``bin_upper``) in numeric order. The
    y axis says what the value is ("mean of cost"), read from ``df.attrs``.

    Privacy guarantee: draws an already released table; releases nothing.
    """
    frame = _to_pandas(df)
    value_name = "estimate" if "estimate" in frame.columns else "coef" if "coef" in frame.columns else None
    if value_name is None:
        raise ValueError(f"plot_result needs an 'estimate' (or 'coef') column; got {list(frame.columns)}")
    attrs = dict(getattr(df, "attrs", {}) or {})
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.6 * len(frame) + 2)), 3.5))
    value = frame[value_name].astype(float).to_numpy()
    yerr = _interval_errors(frame, value)
    alpha = attrs.get("alpha")
    interval = f"{(1 - float(alpha)):.0%} interval" if alpha is not None else "interval"
    histogram = "bin_lower" in frame.columns and "bin_upper" in frame.columns and len(
        [c for c in frame.columns if c not in VALUE_COLUMNS]) <= 1
    if histogram:
        left = frame["bin_lower"].astype(float).to_numpy()
        width = frame["bin_upper"].astype(float).to_numpy() - left
        centres = left + width / 2
        ax.bar(left, value, width=width, align="edge", color="#4c78a8", alpha=0.85, edgecolor="white",
               label="estimate")
        if yerr is not None:
            ax.errorbar(centres, value, yerr=yerr, fmt="none", ecolor="#333333", capsize=3, label=interval)
        ax.set_xlabel(str((attrs.get("query") or {}).get("column") or "bin"))
    else:
        labels, xlabel = _labels(frame)
        labels = [value_label(attrs)] if labels == [""] else labels
        positions = list(range(len(frame)))
        ax.bar(positions, value, color="#4c78a8", alpha=0.85, label="estimate")
        if yerr is not None:
            ax.errorbar(positions, value, yerr=yerr, fmt="none", ecolor="#333333", capsize=4, label=interval)
        ax.set_xticks(positions)
        ax.set_xticklabels(labels, rotation=45 if len(labels) > 6 else 0,
                           ha="right" if len(labels) > 6 else "center")
        if xlabel:
            ax.set_xlabel(xlabel)
    ax.set_ylabel(value_label(attrs))
    if title:
        ax.set_title(title)
    ax.axhline(0, color="#999999", linewidth=0.8)
    if yerr is not None:
        ax.legend(loc="best", fontsize="small")
    return ax
