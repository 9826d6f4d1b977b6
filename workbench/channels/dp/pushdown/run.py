"""Answer a DP query on a table in PostgreSQL or Spark: bounded SQL in the engine, OpenDP noise on the node.

Runs in a worker process (``workbench.channels.dp.worker.run`` hands a task with a
``source`` here). The engine returns only per-group aggregates over the
public key set; OpenDP's mechanisms (:mod:`workbench.channels.dp.pushdown.noise`)
add noise calibrated to the sensitivities below; the table returned has the
shape of the Parquet path's (``estimate``, ``lower``, ``upper``).

Privacy guarantee. Neighbouring tables differ by one privacy unit: one
identifier with all its rows (or one row when the unit is a row, which may
stand for up to ``k = max_contributions`` rows, as the owner declares). After
contribution bounding (:mod:`workbench.channels.dp.pushdown.compile`) a unit has at
most ``k`` rows, chosen by a function of that unit's own rows and the node's
key only, so adding or removing it adds or removes at most ``k`` rows and
changes no other unit's rows. Every row falls in exactly one group of the
public key set (rows with keys outside it are dropped before bounding). Hence:

* **count / histogram** (one count per group): each row moves one count by 1,
  so the vector moves by at most ``k`` in L1 and in L2. Discrete Laplace
  (or Gaussian) at sensitivity ``k``: (epsilon, delta)-DP.
* **sum**: each row adds one integer ``round(clip(x) * 10**decimals)`` of
  absolute value at most ``C = ceil(max(|lo|, |hi|) * 10**decimals)``
  (integer columns: ``C = max(|lo|, |hi|)``) to one group, summed exactly in
  BIGINT; the vector moves by at most ``k * C`` in L1 and L2.
* **mean**: a sum and a count, each released at half the epsilon and delta
  (basic composition); the mean and its interval are post-processing.
* **quantile**: one count per group and cell of the column's public grid
  (:func:`workbench.channels.dp.quantiles.grid`), sensitivity ``k`` as for a
  histogram, discrete Laplace at epsilon; the quantile and its interval are
  read off the noisy counts as the file path reads them
  (:func:`workbench.channels.dp.quantiles.from_counts`, post-processing).

The scales depend on public parameters only, so previews read no data.
"""

from __future__ import annotations

import itertools

from sqlglot import exp

from workbench.errors import InvalidQuery
from workbench.intervals import mean_interval
from workbench.protocol import DatasetInfo, DPQuery
from workbench.query import language
from workbench.query.validate import histogram_bins, validate
from workbench.channels.dp.pushdown import private_keys, several
from workbench.channels.dp import quantiles
from workbench.channels.dp.pushdown.compile import BIN, Compiled, compile_histogram, compile_query, render
from workbench.channels.dp.pushdown.consent import consenting_relation
from workbench.channels.dp.pushdown.noise import integer_vector


def check(info: DatasetInfo, query: DPQuery, decimals: int) -> None:
    """What a table source cannot answer, refused before any budget moves (public metadata only)."""
    schema, _ = language.derived_schema(info, query)
    private = [n for n in query.by if schema.column(n) is not None and schema.column(n).categories is None]
    if private and query.kind not in ("count", "histogram"):
        raise InvalidQuery(f"Dataset '{info.name}' is a table: a {query.kind} grouped by '{private[0]}' (no public "
                           "category list) is not answered; ask for a count, or group by public categories.",
                           code="invalid_query")
    if query.kind == "histogram" and query.column:
        col = schema.column(query.column)
        if col is not None and col.type in ("category", "bool") and col.categories is None:
            raise InvalidQuery(f"A histogram of '{col.name}' on a table needs its public categories.",
                               code="invalid_query")
    compile_query(info, query, "wb_check", "", decimals)  # would_overflow, from public bounds only


def relation(task: dict) -> exp.Expression:
    """What the task's query reads: the table (or Spark's view of a Parquet source), consenting rows only."""
    source = task["source"]
    if source["kind"] == "spark" and source.get("parquet"):
        from workbench.channels.dp.pushdown.spark import view_name

        return consenting_relation(view_name(source["dataset"]), task.get("consent"))
    return consenting_relation(source["table"], task.get("consent"))


def _mechanisms(info, query, compiled: Compiled, epsilon: float, delta: float, alpha: float) -> dict:
    """One mechanism per released statistic, from public parameters only (see the module's sensitivity notes)."""
    k = info.privacy_unit.max_contributions
    groups = len(compiled.key_product())
    if query.kind == "mean":
        return {"sum": integer_vector(groups, k * compiled.sum_bound, epsilon / 2, delta / 2, alpha / 2),
                "count": integer_vector(groups, k, epsilon / 2, delta / 2, alpha / 2)}
    if query.kind == "sum":
        return {"sum": integer_vector(groups, k * compiled.sum_bound, epsilon, delta, alpha)}
    return {"count": integer_vector(groups, k, epsilon, delta, alpha)}


def _fetch(source: dict, compiled: Compiled) -> list[tuple]:
    if source["kind"] == "postgres":
        from workbench.channels.dp.pushdown import postgres

        return postgres.fetch(source["dataset"], source["url"], render(compiled, "postgres"))
    from workbench.channels.dp.pushdown import spark

    return spark.fetch(source, render(compiled, "spark"))


def _normal(value, column_type: str | None):
    """A key value from the engine, in the form of the public list's values (for lookups)."""
    if column_type in (None, "int"):
        return int(value)
    if column_type == "bool":
        return bool(value)
    return str(value)


def _vectors(info: DatasetInfo, compiled: Compiled, rows: list[tuple]) -> dict[str, list[int]]:
    """Exact aggregates over the full public key product (a key with no row is 0), in product order."""
    types = [None if name == BIN else info.column(name).type for name, _ in compiled.keys]
    index = {tuple(_normal(v, t) for v, t in zip(key, types)): i for i, key in enumerate(compiled.key_product())}
    vectors = {name: [0] * len(index) for name in compiled.values}
    width = len(compiled.keys)
    for row in rows:
        position = index.get(tuple(_normal(v, t) for v, t in zip(row[:width], types)))
        if position is None:  # cannot happen (the SQL keeps public keys only); never let it shift a vector
            continue
        for name, value in zip(compiled.values, row[width:]):
            vectors[name][position] = int(value or 0)
    return vectors


def run(task: dict) -> dict:
    """Preview or release one DP query on a table source. ``task`` is plain data built by the node."""
    info = DatasetInfo.model_validate(task["info"])
    query = language.canonical(DPQuery.model_validate(task["query"]))
    epsilon, delta, alpha = float(task["epsilon"]), float(task["delta"]), float(task["alpha"])
    schema = validate(info, query, delta)
    source = task["source"]
    check(info, query, source["decimals"])
    compiled = compile_query(info, query, relation(task), source["secret"], source["decimals"])
    if query.kind in ("agg", "moments"):
        return _several(task, info, schema, query, compiled, epsilon, alpha)
    if query.kind == "quantile":
        return _quantile(task, info, schema, query, epsilon, alpha)
    if compiled.private:
        return _private(task, info, schema, query, compiled, (epsilon, delta, alpha))
    mechanisms = _mechanisms(info, query, compiled, epsilon, delta, alpha)
    stat_alpha = alpha / 2 if query.kind == "mean" else alpha
    accuracy = [{"statistic": name, "alpha": stat_alpha,
                 "accuracy": m.accuracy / (compiled.scale if name == "sum" else 1)}
                for name, m in mechanisms.items()]
    note = _note(query)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": note}
    vectors = _vectors(schema, compiled, _fetch(source, compiled))
    return {"accuracy": accuracy, "note": note, "table": _table(schema, query, compiled, mechanisms, vectors)}


def _private(task: dict, info: DatasetInfo, schema: DatasetInfo, query: DPQuery, compiled: Compiled,
             loss: tuple[float, float, float]) -> dict:
    """Counts over a private key set: OpenDP's thresholded Laplace mechanism (:mod:`.private_keys`)."""
    noise = private_keys.mechanism(info, *loss)
    accuracy = [{"statistic": "count", "alpha": loss[2], "accuracy": noise.accuracy}]
    note = private_keys.note(noise)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": note}
    released = noise(private_keys.exact_counts(schema, compiled, _fetch(task["source"], compiled)))
    return {"accuracy": accuracy, "note": note, "table": private_keys.table(schema, query, compiled, noise, released)}


def _quantile(task: dict, info: DatasetInfo, schema: DatasetInfo, query: DPQuery, epsilon: float,
              alpha: float) -> dict:
    """A quantile (per group) read off a noisy histogram of its column's public grid, with an interval."""
    source = task["source"]
    compiled = compile_histogram(info, query, query.column, relation(task), source["secret"])
    noise = integer_vector(len(compiled.key_product()), info.privacy_unit.max_contributions, epsilon, 0.0, alpha)
    accuracy = [{"statistic": "quantile", "accuracy": None, "alpha": alpha}]
    note = _note(query)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": note}
    counts = noise(_vectors(schema, compiled, _fetch(source, compiled))["count"])
    edges, integer = quantiles.grid(schema.column(query.column))
    cells = len(edges) - 1
    groups = list(itertools.product(*[values for name, values in compiled.keys if name != BIN]))
    rows = sorted([*group, *quantiles.from_counts([float(c) for c in counts[g * cells:(g + 1) * cells]], edges,
                                                  integer, query.quantile, noise.scale, alpha)]
                  for g, group in enumerate(groups))
    return {"accuracy": accuracy, "note": note, "table": {"columns": [*query.by, "estimate", "lower", "upper"],
                                                          "data": rows}}


def _several(task: dict, info: DatasetInfo, schema: DatasetInfo, query: DPQuery, main: Compiled, epsilon: float,
             alpha: float) -> dict:
    """An ``agg`` or ``moments`` release (:mod:`workbench.channels.dp.pushdown.several`)."""
    source = task["source"]
    note = "Computed in the table's own engine (bounded aggregation pushed down); noise added by OpenDP."
    if query.kind == "moments":
        mechanisms = several.moments_mechanisms(info, main, epsilon, alpha)
        accuracy = [{"statistic": a, "alpha": alpha, "accuracy": m.accuracy / main.parts[a][1]}
                    for a, m in mechanisms.items()]
        if task["mode"] == "preview":
            return {"accuracy": accuracy, "note": note}
        table = several.moments_table(schema, query, main, _vectors(schema, main, _fetch(source, main)), mechanisms)
        return {"accuracy": accuracy, "note": note, "table": table}
    histograms = {column: compile_histogram(info, query, column, relation(task), source["secret"])
                  for column in several.histogram_columns(query)}
    mechanisms = several.agg_mechanisms(info, query, main, histograms, epsilon, alpha)
    accuracy = several.agg_accuracy(query, main, mechanisms, alpha)
    if task["mode"] == "preview":
        return {"accuracy": accuracy, "note": note}
    vectors = _vectors(schema, main, _fetch(source, main)) if main.values else {}
    counts = {column: _vectors(schema, compiled, _fetch(source, compiled)) for column, compiled in histograms.items()}
    table = several.agg_table(schema, query, main, vectors, histograms, counts, mechanisms, alpha)
    return {"accuracy": accuracy, "note": note, "table": table}


def _note(query: DPQuery) -> str:
    notes = ["Computed in the table's own engine (bounded aggregation pushed down); noise added by OpenDP."]
    if query.kind == "quantile":
        notes.append("The quantile is read off a noisy histogram of the column's public grid; its interval holds "
                     "for every cell of the histogram at once.")
    if query.kind == "mean":
        notes.append("Mean = noisy sum / noisy count; the interval combines both 95% bounds (conservative).")
    return " ".join(notes)


def _key_columns(compiled: Compiled) -> tuple[list[str], list[tuple]]:
    """Output names of the group keys and each group's public labels, in product order."""
    keys = list(compiled.keys)
    names = ["bin" if name == BIN else name for name, _ in keys]
    labels = [[compiled.labels[BIN][v] for v in values] if name == BIN else values for name, values in keys]
    return names, list(itertools.product(*labels))


def _table(info, query: DPQuery, compiled: Compiled, mechanisms: dict, vectors: dict) -> dict:
    """Post-processing of the noisy vectors only: estimates, intervals, labels."""
    names, groups = _key_columns(compiled)
    groups = groups or [()]
    kind = query.kind
    if kind == "mean":
        sums = [v / compiled.scale for v in mechanisms["sum"](vectors["sum"])]
        counts = mechanisms["count"](vectors["count"])
        a_s = mechanisms["sum"].accuracy / compiled.scale
        a_c = mechanisms["count"].accuracy
        col = info.column(query.column)
        stats = [[*mean_interval(s, float(c), a_s, a_c, tuple(col.bounds)), float(c)]
                 for s, c in zip(sums, counts)]
    else:
        name = "sum" if kind == "sum" else "count"
        scale = compiled.scale if kind == "sum" else 1
        acc = mechanisms[name].accuracy / scale
        stats = [[v / scale, v / scale - acc, v / scale + acc] for v in mechanisms[name](vectors[name])]
    if names == ["bin"]:
        return _binned(info, query, compiled, groups, stats)
    columns = names + ["estimate", "lower", "upper"] + (["noisy_count"] if kind == "mean" else [])
    data = sorted(([*group, *stat] for group, stat in zip(groups, stats)), key=lambda r: tuple(r[:len(names)]))
    return {"columns": columns, "data": data}


def _binned(info, query: DPQuery, compiled: Compiled, groups: list, stats: list) -> dict:
    """A numeric histogram's table as the file path releases it: bins in numeric order, with their public edges."""
    edges = histogram_bins(info.column(query.column), query.bins)
    code = {label: i for i, label in enumerate(compiled.labels[BIN])}
    rows = sorted((code[group[0]], [group[0], float(edges[code[group[0]]]), float(edges[code[group[0]] + 1]), *stat])
                  for group, stat in zip(groups, stats))
    return {"columns": ["bin", "bin_lower", "bin_upper", "estimate", "lower", "upper"], "data": [r for _, r in rows]}
