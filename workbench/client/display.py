"""Rich notebook display (HTML) of nodes, dataset handles and previews."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .connection import Node
    from .dataset import RemoteDataset
    from .results import Preview

_STYLE = "border-collapse:collapse;font-size:12px"


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{html.escape('' if v is None else str(v))}</td>"
                                    for v in row) + "</tr>" for row in rows)
    return f"<table style='{_STYLE}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _bounds_text(bounds, column_type: str) -> str:
    """Public bounds as "0 – 100" for an int column (the wire carries floats), "10 – 60" or "0.5 – 2.5" otherwise."""
    lo, hi = bounds
    if column_type == "int":
        return f"{int(round(lo))} – {int(round(hi))}"
    return f"{lo:g} – {hi:g}"


def budget_bar(spent: float, total: float, label: str = "epsilon") -> str:
    """A small bar: spent (filled) out of total."""
    frac = 0.0 if total <= 0 else min(max(spent / total, 0.0), 1.0)
    color = "#d9534f" if frac > 0.9 else "#f0ad4e" if frac > 0.6 else "#5cb85c"
    return (f"<div style='font-size:12px'>{html.escape(label)}: {spent:.3g} spent of {total:.3g} "
            f"({total - spent:.3g} left)</div><div style='width:240px;height:10px;background:#ddd;border-radius:3px'>"
            f"<div style='width:{frac * 100:.1f}%;height:10px;background:{color};border-radius:3px'></div></div>")


def node_html(node: "Node") -> str:
    try:
        info = node.info()
        catalog = node.catalog()
    except Exception as exc:  # noqa: BLE001 - display must not raise
        return f"<b>Workbench node</b> {html.escape(node.url)}: <span style='color:#d9534f'>{html.escape(str(exc))}</span>"
    rows = catalog[["name", "tier", "licence", "description"]].values.tolist()
    return (f"<b>Workbench node {html.escape(info['name'])}</b> (v{html.escape(info['version'])}, "
            f"you are {html.escape(str(info['user']))} / {html.escape(str(info['role']))})"
            + _table(["dataset", "tier", "licence", "description"], rows))


def dataset_html(ds: "RemoteDataset") -> str:
    rows = []
    for c in ds.schema.columns:
        domain = _bounds_text(c.bounds, c.type) if c.bounds else (", ".join(map(str, c.categories)) if c.categories
                                                                     else "")
        rows.append([c.name, c.type, domain, c.description])
    unit = ds.schema.privacy_unit
    unit_text = f"one person ({unit.id_column}, ≤{unit.max_contributions} rows)" if unit.id_column else "one row"
    head = (f"<b>{html.escape(ds.name)}</b> — {html.escape(ds.schema.tier)} · licence "
            f"{html.escape(ds.schema.licence or 'n/a')} · protects {html.escape(unit_text)}<br>"
            f"<i>{html.escape(ds.schema.description)}</i>")
    bar = ""
    if ds.schema.tier == "private":
        try:
            b = ds.budget()
            bar = budget_bar(b["epsilon_spent"], b["epsilon_spent"] + b["epsilon"])
        except Exception as exc:  # noqa: BLE001
            bar = f"<div style='font-size:12px;color:#d9534f'>{html.escape(str(exc))}</div>"
    return head + bar + _table(["column", "type", "public bounds / categories", "description"], rows)


def preview_html(preview: "Preview") -> str:
    b = preview.body
    rows = [[a.statistic, "n/a" if a.accuracy is None else f"± {a.accuracy:.4g}", f"{(1 - a.alpha) * 100:.1f}%"]
            + ([f"{a.share:.0%}"] if a.share is not None else []) for a in b.accuracy]
    headers = ["statistic", "expected error", "confidence"] + (["share of ε"] if any(
        a.share is not None for a in b.accuracy) else [])
    cost = f"epsilon = {b.epsilon:g}" + (f", delta = {b.delta:g}" if b.delta else "")
    replay = " <b>(already answered: a release would be free)</b>" if b.would_replay else ""
    after = ""
    if b.budget_left_before is not None and b.budget_left_after is not None:
        after = (f"<div style='font-size:12px'>your grant: epsilon {b.budget_left_before.epsilon:.3g} left now, "
                 f"{b.budget_left_after.epsilon:.3g} after this release</div>")
    note = f"<div style='font-size:11px;color:#666'>{html.escape(b.note)}</div>" if b.note else ""
    what = b.text or b.query.kind
    return (f"<b>Preview</b> of <code>{html.escape(what)}</code> on {html.escape(b.dataset)}: cost {cost}{replay}"
            + after + _table(headers, rows) + note)
