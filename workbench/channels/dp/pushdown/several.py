"""Several statistics (``agg``) and noisy moments (``moments``) on a table source: mechanisms and tables.

The SQL (:func:`workbench.channels.dp.pushdown.compile.agg_values`, ``moment_values``) returns one exact
integer vector per *part* over the public key product: a count, or a fixed-point sum of a per-row value
clipped to public bounds (per-row bound ``B``, so a unit's at most ``k`` kept rows move it by at most ``k * B``
in L1; see :mod:`workbench.channels.dp.pushdown.run` for why a unit keeps at most ``k`` rows).

Privacy guarantee (basic composition). Statistic ``i`` gets ``share_i * epsilon`` (even, or by ``weights``,
as on the file path: :func:`workbench.channels.dp.statistics.shares`); its ``m`` parts get an equal split of
it, each part a discrete Laplace mechanism (``make_laplace`` on ``i64``) at its own sensitivity. The quantiles
of one column are read off ONE histogram of counts over the column's public grid
(:func:`workbench.channels.dp.quantiles.grid`, sensitivity ``k``), at the sum of their shares. A ``moments``
query splits epsilon evenly over its ``1 + c + c(c+1)/2`` parts. The parts' epsilons add up to the release's
epsilon; estimates and intervals are post-processing, computed as the file path computes them
(:func:`workbench.channels.dp.statistics.agg_table`, ``moments_table``, :func:`workbench.channels.dp.quantiles.from_counts`).
"""

from __future__ import annotations

import polars as pl

from workbench.channels.dp import quantiles, statistics
from workbench.channels.dp.pushdown.compile import BIN, Compiled
from workbench.channels.dp.pushdown.noise import Noise, integer_vector
from workbench.protocol import DatasetInfo, DPQuery


def histogram_columns(query: DPQuery) -> list[str]:
    """The columns whose quantiles an ``agg`` asks for (one histogram each)."""
    return list(dict.fromkeys(s.column for s in query.aggs if s.stat == "quantile"))


def agg_mechanisms(info: DatasetInfo, query: DPQuery, main: Compiled, histograms: dict[str, Compiled],
                   epsilon: float, alpha: float) -> dict[str, Noise]:
    """One mechanism per part (alias ``<statistic>__<part>``) and per quantile histogram (``hist__<column>``)."""
    k = info.privacy_unit.max_contributions
    groups = len(main.key_product())
    out: dict[str, Noise] = {}
    share = dict(zip([s.name for s in query.aggs], statistics.shares(query)))
    for s in query.aggs:
        if s.stat == "quantile":
            continue
        parts = statistics.PARTS[s.stat]
        for part in parts:
            alias = f"{s.name}__{part}"
            bound, _ = main.parts[alias]
            out[alias] = integer_vector(groups, k * bound, share[s.name] * epsilon / len(parts), 0.0,
                                        alpha / len(parts))
    for column, compiled in histograms.items():
        total = sum(share[s.name] for s in query.aggs if s.stat == "quantile" and s.column == column)
        out[f"hist__{column}"] = integer_vector(len(compiled.key_product()), k, total * epsilon, 0.0, alpha)
    return out


def moments_mechanisms(info: DatasetInfo, main: Compiled, epsilon: float, alpha: float) -> dict[str, Noise]:
    k = info.privacy_unit.max_contributions
    m = len(main.values)
    return {alias: integer_vector(1, k * main.parts[alias][0], epsilon / m, 0.0, alpha) for alias in main.values}


def agg_accuracy(query: DPQuery, main: Compiled | None, mechanisms: dict[str, Noise], alpha: float) -> list[dict]:
    """Per part of each statistic: its half-width at alpha/m (real units) and the statistic's share, as the file
    path reports them (a quantile: no closed-form accuracy)."""
    rows = []
    for s, share in zip(query.aggs, statistics.shares(query)):
        parts = statistics.PARTS[s.stat]
        for part in parts:
            alias = f"{s.name}__{part}"
            label = s.name if len(parts) == 1 else f"{s.name} ({statistics.PART_NAMES[part]})"
            accuracy = None if part == "q" else mechanisms[alias].accuracy / main.parts[alias][1]
            rows.append({"statistic": label, "accuracy": accuracy, "alpha": alpha / len(parts), "share": share})
    return rows


def _noisy(compiled: Compiled, mechanisms: dict[str, Noise], vectors: dict[str, list[int]]) -> dict[str, list]:
    """Each part's noisy vector in real units (the fixed-point scale divided out)."""
    return {alias: [v / compiled.parts[alias][1] for v in mechanisms[alias](vectors[alias])]
            for alias in compiled.values}


def agg_table(schema: DatasetInfo, query: DPQuery, main: Compiled, main_vectors, histograms: dict[str, Compiled],
              histogram_vectors: dict[str, dict], mechanisms: dict[str, Noise], alpha: float) -> dict:
    """The long table ``[*by, statistic, estimate, lower, upper]`` from the noisy parts (post-processing)."""
    by = list(query.by)
    groups = main.key_product()
    noisy = _noisy(main, mechanisms, main_vectors) if main.values else {}
    rows = [{**dict(zip(by, key)), **{a: noisy[a][i] for a in noisy}} for i, key in enumerate(groups)]
    frame = pl.DataFrame(rows) if rows[0] else pl.DataFrame({"_": [0]})
    frame = frame.sort(by) if by else frame
    counts = {}
    for column, compiled in histograms.items():
        mechanism = mechanisms[f"hist__{column}"]
        values = mechanism(histogram_vectors[column]["count"])
        bins = len(compiled.labels[BIN]) - 1
        counts[column] = {key: [float(c) for c in values[g * bins:(g + 1) * bins]] for g, key in enumerate(groups)}

    def quantile(s, keys: tuple):
        edges, integer = quantiles.grid(schema.column(s.column))
        scale = mechanisms[f"hist__{s.column}"].scale
        return quantiles.from_counts(counts[s.column][keys], edges, integer, s.p, scale, alpha)

    def acc(alias: str, m: int):
        return mechanisms[alias].accuracy / main.parts[alias][1] if alias in mechanisms else None

    return statistics.agg_table(schema, query, by, frame, acc, quantile)


def moments_table(schema: DatasetInfo, query: DPQuery, main: Compiled, vectors, mechanisms: dict[str, Noise]) -> dict:
    noisy = _noisy(main, mechanisms, vectors)
    frame = pl.DataFrame([{alias: values[0] for alias, values in noisy.items()}])
    noise = {alias: (mechanisms[alias].scale / main.parts[alias][1], "Integer Laplace") for alias in main.values}
    return statistics.moments_table(schema, query.columns, frame, noise)
