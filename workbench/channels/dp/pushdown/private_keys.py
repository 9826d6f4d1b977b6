"""Counts (and histograms) grouped by a key without a public category list, on a table in PostgreSQL or Spark.

The engine runs the same bounded SQL as for public keys (:mod:`workbench.channels.dp.pushdown.compile`:
filter, at most ``k = max_contributions`` rows per privacy unit chosen by the node's keyed hash) and returns
one exact count per key value *present in the table*; which values exist is itself private. On the node,
OpenDP's Laplace mechanism with a threshold (``make_laplace_threshold``,
:func:`workbench.channels.dp.pushdown.noise.thresholded_counts`) adds integer Laplace noise to every count
and drops every key whose noisy count is below the threshold, inside the mechanism.

Privacy guarantee. Neighbouring tables differ by one privacy unit with all its rows; after bounding it has
at most ``k`` rows, chosen from its own rows only, so adding or removing it touches at most ``k`` keys
(l0 <= k), moves each of their counts by at most ``k`` (l-inf <= k) and all of them by at most ``k`` (l1 <= k),
and changes no other unit's rows. ``make_laplace_threshold`` at ``d_in = (k, k, k)`` with the scale and
threshold of :func:`thresholded_counts` is (epsilon, delta)-DP: delta bounds the chance that a key held by
one unit alone is released. These are the scale and threshold OpenDP's Polars plan picks for the same count
on a file, so both paths give the same guarantee and the same distribution of noisy counts. Everything the
table carries besides the released keys and their noisy counts (intervals, bin edges) is public.
"""

from __future__ import annotations

import json

from workbench.protocol import DatasetInfo, DPQuery
from workbench.query.validate import histogram_bins
from workbench.channels.dp.pushdown.compile import BIN, Compiled
from workbench.channels.dp.pushdown.noise import Thresholded, thresholded_counts


def mechanism(info: DatasetInfo, epsilon: float, delta: float, alpha: float) -> Thresholded:
    """The thresholded Laplace mechanism for counts at the dataset's privacy unit (public parameters only)."""
    return thresholded_counts(info.privacy_unit.max_contributions, epsilon, delta, alpha)


def note(noise: Thresholded) -> str:
    return (f"Groups with a noisy count below {noise.threshold} are suppressed (private key set). "
            "Computed in the table's own engine (bounded counts pushed down); noise and threshold by OpenDP.")


def _normal(value, column_type: str | None):
    """A key value from the engine in the form the file path gives it (the column's declared type; null kept)."""
    if value is None:
        return None
    if column_type in (None, "int"):
        return int(value)
    if column_type == "bool":
        return bool(value)
    return str(value)


def exact_counts(schema: DatasetInfo, compiled: Compiled, rows: list[tuple]) -> dict[str, int]:
    """The engine's bounded counts by key, keyed by the key's JSON text (what OpenDP's mechanism takes).

    Two engine values that read as the same key (never expected) are added together: a unit still touches at
    most ``k`` keys by at most ``k`` in total, so the sensitivity holds."""
    types = [None if name == BIN else schema.column(name).type for name, _ in compiled.keys]
    width = len(types)
    counts: dict[str, int] = {}
    for row in rows:
        key = json.dumps([_normal(v, t) for v, t in zip(row[:width], types)])
        counts[key] = counts.get(key, 0) + int(row[width] or 0)
    return counts


def table(schema: DatasetInfo, query: DPQuery, compiled: Compiled, noise: Thresholded,
          released: dict[str, int]) -> dict:
    """The released keys and their noisy counts (post-processing), in the file path's shape and order: keys
    sorted (nulls first), a numeric histogram's bins in numeric order with their public edges."""
    names = ["bin" if name == BIN else name for name, _ in compiled.keys]
    edges = histogram_bins(schema.column(query.column), query.bins) if BIN in compiled.labels else None
    ordered = []
    for key, count in released.items():
        values = json.loads(key)  # a numeric histogram's bin (always the last key) is its code here
        stat = [float(count), float(count) - noise.accuracy, float(count) + noise.accuracy]
        order = tuple((v is not None, v) for v in values)
        if edges is not None:
            code = values[-1]
            values = [*values[:-1], compiled.labels[BIN][code], float(edges[code]), float(edges[code + 1])]
        ordered.append((order, [*values, *stat]))
    columns = names + (["bin_lower", "bin_upper"] if edges is not None else []) + ["estimate", "lower", "upper"]
    return {"columns": columns, "data": [row for _, row in sorted(ordered, key=lambda pair: pair[0])]}
