"""The fidelity report of a DP synthesis, built only from DP-released numbers.

The node computes it from the synthetic rows and the noisy marginals the
OpenDP measurement released (both post-processing of the DP release); no real
row, count or statistic enters it. The client turns it into a table and a
matplotlib figure.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from workbench.channels.synth.domain import Plan

COVERED = (
    "Covered by DP: every synthetic row, every number in this report, and the noisy marginals it compares "
    "against are post-processing of one composition of OpenDP measurements (the method's marginals over the "
    "public bins and, for numeric columns, fine one-way marginals that shape values inside those bins) that "
    "satisfies pure epsilon-DP at the dataset's privacy unit (one person, with up to max_contributions rows). "
    "Any analysis of these rows stays within that epsilon."
)
NOT_COVERED = (
    "Not covered by DP: the public metadata (columns, types, bounds, category sets, the privacy unit, "
    "max_rows) is published by the owner as-is; bounds and category sets were not learned from the data and "
    "shape every output. The report compares synthetic rows with NOISY marginals, not with the real data: "
    "a small TVD means 'as good as the noise allows', and pairs the method did not measure are not checked. "
    "Real values outside the public domain were folded into the outermost bin or the null cell. Synthetic "
    "values stay inside the range the DP fine marginals support, widened by a margin of public bins where a "
    "falling tail tapers off geometrically, so a real tail thinner than their noise is cut or extrapolated. "
    "Fit time is visible to you and depends mostly on the dataset's shape, not its values."
)


def _tvd(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def _normalized(noisy: np.ndarray) -> tuple[np.ndarray, float]:
    clipped = np.clip(noisy, 0.0, None)
    total = float(clipped.sum())
    if total <= 0:
        return np.full(len(noisy), 1.0 / len(noisy)), 0.0
    return clipped / total, total


def fidelity_figures(plan: "Plan", cells: dict[str, np.ndarray], measurements: list[dict[str, Any]],
                     shapes: list[dict[str, Any]] | None = None) -> dict:
    """TVD between the synthetic rows and each released noisy marginal, plus the noise floor.

    ``noise_floor`` is the TVD that noise alone would give (E|noise| per cell over the noisy total):
    a synthetic TVD near it cannot be improved at this epsilon.
    """
    rows = len(next(iter(cells.values()))) if cells else 0
    marginals = []
    for m in measurements:
        cols = m["columns"]
        shape = tuple(plan.domains[c].cells for c in cols)
        flat = np.ravel_multi_index(tuple(np.clip(cells[c], 0, plan.domains[c].cells - 1) for c in cols), shape)
        syn = np.bincount(flat, minlength=math.prod(shape)).astype(float)
        syn = syn / syn.sum() if syn.sum() > 0 else syn
        noisy = np.asarray(m["noisy"], dtype=float)
        ref, total = _normalized(noisy)
        floor = 0.5 * len(noisy) * m["noise_std"] * math.sqrt(2 / math.pi) / total if total > 0 else None
        labels = [" | ".join(parts) for parts in _product([plan.domains[c].labels for c in cols])]
        marginals.append({
            "columns": cols, "cells": len(noisy), "noise_std": m["noise_std"], "noisy_total": total,
            "tvd": _tvd(syn, ref), "noise_floor": None if floor is None else min(floor, 1.0),
            "labels": labels, "noisy": ref.tolist(), "synthetic": syn.tolist(),
        })
    one = [m["tvd"] for m in marginals if len(m["columns"]) == 1]
    two = [m["tvd"] for m in marginals if len(m["columns"]) == 2]
    ks = [s["ks"] for s in shapes or [] if s["ks"] is not None]
    return {
        "dp": True,
        "synthetic_rows": rows,
        "tvd_1way_mean": float(np.mean(one)) if one else None,
        "tvd_2way_mean": float(np.mean(two)) if two else None,
        "shape_ks_mean": float(np.mean(ks)) if ks else None,
        "marginals": marginals,
        "shapes": shapes or [],
        "covered": COVERED,
        "not_covered": NOT_COVERED,
    }


def column_shapes(plan: "Plan", cells: dict[str, np.ndarray], fines: dict, fine_cells: dict[str, np.ndarray],
                  fine_noisy: dict[str, dict], measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each column's shape: its DP marginal next to the synthetic rows' histogram on the same cells.

    The DP marginal is the column's fine one-way measurement when it has fine cells, otherwise its released
    one-way marginal (or one summed out of a released pair containing it). Noisy counts are clipped at zero
    and normalised; ``noise_share`` is the Laplace std over the noisy total (the error bar of one cell). ``ks``
    is the largest gap between the two cumulative shares (numeric columns; categories have no order). Reads
    DP measurements and synthetic rows only.
    """
    out = []
    for n in plan.columns:
        if n in fines:
            labels, noisy, std = fines[n].labels(), fine_noisy[n]["noisy"], fine_noisy[n]["noise_std"]
            mine, source = fine_cells[n], f"fine one-way marginal ({fines[n].cells} cells)"
        else:
            found = oneway_marginal(n, measurements)
            if found is None:
                continue
            noisy, std, source = found
            labels, mine = list(plan.domains[n].labels), cells[n]
        ref, total = _normalized(np.asarray(noisy, dtype=float))
        syn = np.bincount(np.asarray(mine, dtype=np.int64), minlength=len(ref))[: len(ref)].astype(float)
        syn = syn / syn.sum() if syn.sum() > 0 else syn
        numeric = plan.domains[n].keys is None
        ks = float(np.abs(np.cumsum(ref) - np.cumsum(syn)).max()) if numeric else None
        out.append({"column": n, "source": source, "cells": len(ref), "labels": labels, "noisy": ref.tolist(),
                    "synthetic": syn.tolist(), "noise_std": std, "noisy_total": total,
                    "noise_share": std / total if total > 0 else None, "tvd": _tvd(syn, ref), "ks": ks})
    return out


def oneway_marginal(column: str, measurements: list[dict[str, Any]]) -> tuple[np.ndarray, float, str] | None:
    """A released marginal of ``column`` alone: measured, or summed out of a measured pair (post-processing)."""
    for m in measurements:
        if m["columns"] == [column]:
            return np.asarray(m["noisy"], dtype=float), m["noise_std"], "released one-way marginal"
    for m in measurements:
        if column in m["columns"]:
            return None if m.get("shape") is None else _summed(column, m)
    return None


def _summed(column: str, m: dict[str, Any]) -> tuple[np.ndarray, float, str]:
    table = np.asarray(m["noisy"], dtype=float).reshape(m["shape"])
    axis = m["columns"].index(column)
    others = [a for a in range(table.ndim) if a != axis]
    summed = table.sum(axis=tuple(others))
    cells_summed = table.size // table.shape[axis]
    return summed, m["noise_std"] * math.sqrt(cells_summed), "summed out of the released " + " x ".join(
        m["columns"]) + " marginal"


def _product(lists: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    import itertools

    return list(itertools.product(*lists))


class FidelityReport:
    """What a synthesis cost, how it was made, and how close it is to the DP measurements it was fitted to."""

    def __init__(self, raw: dict[str, Any], epsilon_charged: float | None = None, replayed: bool = False,
                 free_because: str = "replayed"):
        self.raw = raw
        self.epsilon_charged = epsilon_charged
        self.replayed = replayed
        self.free_because = free_because

    # ---------------------------------------------------------------- figures

    @property
    def dp(self) -> bool:
        return bool(self.raw.get("dp"))

    @property
    def method(self) -> str:
        return self.raw.get("method", "")

    @property
    def epsilon(self) -> float | None:
        return self.raw.get("epsilon")

    @property
    def tvd_1way(self) -> float | None:
        return self.raw.get("tvd_1way_mean")

    @property
    def tvd_2way(self) -> float | None:
        return self.raw.get("tvd_2way_mean")

    @property
    def covered(self) -> str:
        return self.raw.get("covered", "")

    @property
    def not_covered(self) -> str:
        return self.raw.get("not_covered", "")

    @property
    def privacy_metrics(self) -> dict[str, Any] | None:
        """SDMetrics privacy metrics (non-DP SDV releases only)."""
        return self.raw.get("privacy_metrics")

    def figures(self):
        """One row per released marginal: columns, cells, noise std, TVD to the synthetic rows, noise floor."""
        import pandas as pd

        rows = [{"marginal": " × ".join(m["columns"]), "ways": len(m["columns"]), "cells": m["cells"],
                 "noise_std": m["noise_std"], "tvd": m["tvd"], "noise_floor": m["noise_floor"]}
                for m in self.raw.get("marginals", [])]
        return pd.DataFrame(rows, columns=["marginal", "ways", "cells", "noise_std", "tvd", "noise_floor"])

    @property
    def privacy(self) -> str:
        """The release's privacy paragraph: one composition, its parts and what each bought."""
        return self.raw.get("privacy", "")

    @property
    def budget(self) -> dict[str, Any]:
        """How epsilon was split: ``model`` and ``shapes`` shares (they add up to 1), epsilons, shape columns."""
        return dict(self.raw.get("budget") or {})

    def shapes(self):
        """One row per column: which DP marginal its shape is compared with, cells, TVD and (numeric columns)
        the largest gap between the cumulative shares (a Kolmogorov-Smirnov distance on those cells)."""
        import pandas as pd

        rows = [{"column": c["column"], "dp_marginal": c["source"], "cells": c["cells"], "tvd": c["tvd"],
                 "ks": c["ks"], "noise_share": c["noise_share"]} for c in self.raw.get("shapes", [])]
        return pd.DataFrame(rows, columns=["column", "dp_marginal", "cells", "tvd", "ks", "noise_share"])

    def plot_shapes(self, columns: list[str] | None = None):
        """A matplotlib figure, one panel per column: the DP marginal (grey, with +-2 noise std error bars)
        against the synthetic rows' shares (green line) on the same cells."""
        import matplotlib.pyplot as plt

        shapes = [c for c in self.raw.get("shapes", []) if columns is None or c["column"] in columns]
        cols = min(len(shapes), 4) or 1
        rows = max(math.ceil(len(shapes) / cols), 1)
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
        for ax in axes.ravel()[len(shapes):]:
            ax.set_axis_off()
        for ax, shape in zip(axes.ravel(), shapes):
            x = np.arange(shape["cells"])
            band = 2 * (shape["noise_share"] or 0.0)
            ax.bar(x, shape["noisy"], width=1.0, color="#b0b0b0", label="DP marginal")
            ax.errorbar(x, shape["noisy"], yerr=band, fmt="none", ecolor="#707070", elinewidth=0.6,
                        label="±2 noise std")
            ax.step(x, shape["synthetic"], where="mid", color="#2a9d55", linewidth=1.2, label="synthetic")
            ticks = x if len(x) <= 12 else x[:: max(len(x) // 6, 1)]
            ax.set_xticks(ticks, [shape["labels"][i] for i in ticks], rotation=60, fontsize=6)
            ks = "" if shape["ks"] is None else f", KS {shape['ks']:.3f}"
            ax.set_title(f"{shape['column']} (TVD {shape['tvd']:.3f}{ks})", fontsize=9)
        if shapes:
            axes.ravel()[0].legend(fontsize=6)
            fig.suptitle("column shapes: synthetic rows vs the DP marginals (no real statistic)", fontsize=10)
        fig.tight_layout()
        return fig

    def plot(self, marginal: str | list[str] | None = None):
        """A matplotlib figure: TVD per released marginal (left) and the synthetic vs noisy distribution of
        one marginal (right; default: the worst two-way one)."""
        import matplotlib.pyplot as plt

        marginals = self.raw.get("marginals", [])
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1, 1.3]})
        if not marginals:
            left.text(0.5, 0.5, "no DP marginals to compare\n(" + ("non-DP release" if not self.dp else "") + ")",
                      ha="center", va="center")
            left.set_axis_off()
            right.set_axis_off()
            return fig
        names = [" × ".join(m["columns"]) for m in marginals]
        tvd = [m["tvd"] for m in marginals]
        floor = [m["noise_floor"] or 0.0 for m in marginals]
        y = np.arange(len(names))
        left.barh(y, tvd, color=["#4c72b0" if len(m["columns"]) == 1 else "#dd8452" for m in marginals],
                  label="TVD synthetic vs noisy")
        left.scatter(floor, y, color="black", marker="|", s=120, label="noise floor", zorder=3)
        left.set_yticks(y, names, fontsize=8)
        left.invert_yaxis()
        left.set_xlabel("total variation distance")
        left.set_title(f"{self.method}, epsilon={self.epsilon:g}: fidelity per released marginal", fontsize=10)
        left.legend(fontsize=8, loc="lower right")
        if marginal is not None:
            wanted = [marginal] if isinstance(marginal, str) else list(marginal)
            pick = next((m for m in marginals if m["columns"] == wanted), None)
            if pick is None:
                raise ValueError(f"No released marginal over {wanted}; choose one of {names}.")
        else:
            two = [m for m in marginals if len(m["columns"]) == 2]
            pick = max(two or marginals, key=lambda m: m["tvd"])
        x = np.arange(len(pick["labels"]))
        width = 0.42
        right.bar(x - width / 2, pick["noisy"], width, label="noisy marginal (DP)", color="#8c8c8c")
        right.bar(x + width / 2, pick["synthetic"], width, label="synthetic rows", color="#55a868")
        if len(x) <= 40:
            right.set_xticks(x, pick["labels"], rotation=90, fontsize=7)
        else:
            right.set_xlabel(f"{len(x)} cells")
        right.set_ylabel("share of rows")
        right.set_title(" × ".join(pick["columns"]) + f" (TVD {pick['tvd']:.3f})", fontsize=10)
        right.legend(fontsize=8)
        fig.tight_layout()
        return fig

    # ---------------------------------------------------------------- display

    def summary(self) -> str:
        if not self.dp:
            metrics = self.privacy_metrics or {}
            parts = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            return (f"NON-DP release: SDV {self.raw.get('synthesizer', '')} fitted on the real rows "
                    f"(approved by the owner). SDMetrics privacy: {parts or 'n/a'}.")
        spent = (f"free ({self.free_because})" if self.replayed else f"epsilon={self.epsilon_charged:g}") \
            if self.epsilon_charged is not None else f"epsilon={self.epsilon:g}"
        t1 = "n/a" if self.tvd_1way is None else f"{self.tvd_1way:.4f}"
        t2 = "n/a (no pair was measured)" if self.tvd_2way is None else f"{self.tvd_2way:.4f}"
        ks = self.raw.get("shape_ks_mean")
        shape = "" if ks is None else f"; column shapes: mean KS vs the DP marginals {ks:.4f}"
        return (f"{self.raw.get('mechanism', self.method)}; privacy spent: {spent}; "
                f"mean TVD vs noisy 1-way marginals {t1}, 2-way {t2}{shape}.")

    def __repr__(self) -> str:
        return f"<FidelityReport {self.summary()}>"

    def _repr_html_(self) -> str:
        import html

        parts = [f"<p><b>{html.escape(self.summary())}</b></p>"]
        if self.dp:
            parts += [self.figures().to_html(index=False, float_format=lambda v: f"{v:.4f}"), _png(self.plot())]
            if self.raw.get("shapes"):
                parts += [self.shapes().to_html(index=False, float_format=lambda v: f"{v:.4f}"),
                          _png(self.plot_shapes())]
        if self.privacy:
            parts.append(f"<p>{html.escape(self.privacy)}</p>")
        parts.append(f"<p>{html.escape(self.covered)}</p><p>{html.escape(self.not_covered)}</p>")
        return "\n".join(parts)


def _png(fig) -> str:
    """A matplotlib figure as an inline HTML image (the figure is closed)."""
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}"/>'
