"""The public domain a synthesizer works in, built from catalogue metadata only.

Every key, bin edge and decoded value comes from a dataset's public
:class:`~workbench.protocol.DatasetInfo` (category sets, bounds), never from
the data. A value in the data that the metadata does not list (a rare
category, an out-of-range number) is folded into a public cell by OpenDP (the
null cell, or the outermost bin), so it can never appear in synthetic output.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.errors import InvalidQuery
from workbench.protocol import ColumnInfo, DatasetInfo
from workbench.channels.synth.wire import SynthSpec

MAX_CLIQUE_CELLS = 250_000


@dataclass(frozen=True)
class ColumnDomain:
    """One column's public cells. ``labels[i]`` names cell ``i``; the null cell is last."""

    name: str
    type: str
    keys: list | None = None        # categorical keys (category, bool)
    cuts: list | None = None        # numeric cut points (left-open bins), inside the public bounds
    edges: list | None = None       # numeric: the bin edges [lo, c1, ..., hi] used to decode
    labels: tuple[str, ...] = ()

    @property
    def cells(self) -> int:
        """Number of cells (categorical columns end with a null cell; OpenDP folds numeric nulls into the
        last bin)."""
        return len(self.labels)

    def decode(self, index: np.ndarray, rng: np.random.Generator) -> list:
        """Cell indices → values; numbers are drawn uniformly inside their public bin. Null cell → None."""
        index = np.asarray(index, dtype=np.int64)
        if self.keys is not None:
            return [None if i >= len(self.keys) else self.keys[i] for i in index]
        null = np.zeros(len(index), dtype=bool)
        edges = np.asarray(self.edges, dtype=float)
        safe = np.clip(index, 0, len(edges) - 2)
        lo, hi = edges[safe], edges[safe + 1]
        if self.type == "int":
            # bin 0 is [lo, c1]; bin j>0 is (c_j, c_{j+1}] → integers c_j+1 .. c_{j+1}
            low = np.where(safe == 0, np.ceil(lo), np.floor(lo) + 1)
            high = np.floor(hi)
            high = np.maximum(high, low)
            drawn = rng.integers(low.astype(np.int64), high.astype(np.int64) + 1)
            return [None if n else int(v) for v, n in zip(drawn, null)]
        drawn = rng.uniform(lo, hi)
        return [None if n else float(v) for v, n in zip(drawn, null)]

    def encode(self, values: list) -> np.ndarray:
        """Values → cell indices (for the report: synthetic rows only, never real ones)."""
        last = self.cells - 1
        if self.keys is not None:
            lookup = {k: i for i, k in enumerate(self.keys)}
            return np.asarray([lookup.get(v, last) for v in values], dtype=np.int64)
        cuts = np.asarray(self.cuts, dtype=float)
        out = np.full(len(values), last, dtype=np.int64)
        arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        ok = ~np.isnan(arr)
        # left-open bins: value v is in bin j when c_j < v <= c_{j+1}
        out[ok] = np.searchsorted(cuts, arr[ok], side="left")
        return out


def _fmt(x: float) -> str:
    return f"{x:g}"


def _numeric(col: ColumnInfo, bins: int) -> ColumnDomain:
    lo, hi = col.bounds
    if col.type == "int":
        lo_i, hi_i = int(math.ceil(lo)), int(math.floor(hi))
        if hi_i < lo_i:
            raise InvalidQuery(f"Column '{col.name}' has integer bounds containing no integer.", code="bad_bounds")
        span = hi_i - lo_i + 1
        k = min(bins, span)
        cuts = sorted({lo_i - 1 + round(j * span / k) for j in range(1, k)})
        edges = [lo_i, *cuts, hi_i]
        labels = []
        for j in range(len(edges) - 1):
            a = edges[j] if j == 0 else edges[j] + 1
            b = edges[j + 1]
            labels.append(str(a) if a == b else f"{a}-{b}")
        return ColumnDomain(col.name, "int", cuts=[int(c) for c in cuts], edges=[float(e) for e in edges],
                            labels=tuple(labels))
    lo_f, hi_f = float(lo), float(hi)
    width = (hi_f - lo_f) / bins
    cuts = [lo_f + j * width for j in range(1, bins)]
    edges = [lo_f, *cuts, hi_f]
    labels = [f"[{_fmt(edges[0])}, {_fmt(edges[1])}]"] + [
        f"({_fmt(a)}, {_fmt(b)}]" for a, b in zip(edges[1:], edges[2:])]
    return ColumnDomain(col.name, "float", cuts=cuts, edges=edges, labels=tuple(labels))


def column_domain(col: ColumnInfo, bins: int) -> ColumnDomain:
    """The public cells of one column, or :class:`InvalidQuery` if the metadata cannot define them."""
    if col.type == "id":
        raise InvalidQuery(f"Column '{col.name}' is an identifier: it is never synthesized.", code="invalid_query")
    if col.type in ("int", "float"):
        if col.bounds is None:
            raise InvalidQuery(f"Column '{col.name}' has no public bounds; the owner must declare them "
                               "before it can be synthesized.", code="bad_bounds")
        return _numeric(col, bins)
    if col.type == "bool":
        keys: list[Any] = [False, True]
    elif col.categories:
        keys = [str(c) for c in col.categories] if col.type in ("category", "string") else list(col.categories)
    else:
        raise InvalidQuery(f"Column '{col.name}' has no public category set; the owner must declare one "
                           "before it can be synthesized.", code="invalid_query")
    if len(set(keys)) != len(keys):
        raise InvalidQuery(f"Column '{col.name}' lists a category twice.", code="invalid_config")
    return ColumnDomain(col.name, col.type, keys=keys, labels=tuple(str(k) for k in keys) + ("null",))


def synthesizable(col: ColumnInfo) -> bool:
    """Whether the public metadata gives this column a finite domain."""
    if col.type == "id":
        return False
    if col.type in ("int", "float"):
        return col.bounds is not None
    return col.type == "bool" or bool(col.categories)


@dataclass(frozen=True)
class Plan:
    """A validated synthesis: the columns, their public domains, and the workload (cliques)."""

    columns: list[str]
    domains: dict[str, ColumnDomain]
    cliques: list[tuple[str, ...]]
    dropped: dict[str, str]

    def cells(self, clique: tuple[str, ...]) -> int:
        return math.prod(self.domains[c].cells for c in clique)


def _columns(info: DatasetInfo, spec: SynthSpec) -> tuple[list[str], dict[str, str]]:
    """The columns to synthesize (the named ones, or every one with a public domain) and those left out."""
    id_col = info.privacy_unit.id_column
    dropped: dict[str, str] = {}
    if spec.columns is not None:
        names = list(spec.columns)
        if len(set(names)) != len(names):
            raise InvalidQuery("Columns must be distinct.", code="invalid_query")
        for name in names:
            col = info.column(name)
            if col is None:
                raise InvalidQuery(f"Unknown column '{name}' in dataset '{info.name}'.", code="unknown_column")
            if name == id_col:
                raise InvalidQuery(f"Column '{name}' identifies the privacy unit: it is never synthesized.",
                                   code="invalid_query")
    else:
        names = []
        for col in info.columns:
            if col.name == id_col or col.type == "id":
                dropped[col.name] = "identifier"
            elif not synthesizable(col):
                dropped[col.name] = "no public bounds or category set"
            else:
                names.append(col.name)
    if not names:
        raise InvalidQuery("No column of this dataset has a public domain to synthesize.", code="invalid_query")
    if spec.method == "mst" and len(names) < 2:  # OpenDP's MST fails on one column, after the charge
        raise InvalidQuery(f"MST picks pairs of columns and needs at least two; only '{names[0]}' can be "
                           "synthesized here. Use method='independent' (or 'fixed') for one column.",
                           code="invalid_query")
    return names, dropped


def plan(info: DatasetInfo, spec: SynthSpec) -> Plan:
    """Check a spec against the public metadata and fix its columns, domains and workload."""
    names, dropped = _columns(info, spec)
    domains = {n: column_domain(info.column(n), spec.bins) for n in names}
    if spec.method == "independent":
        if spec.marginals is not None:
            raise InvalidQuery("The independent method measures one-way marginals only; drop 'marginals'.",
                               code="invalid_query")
        cliques = [(n,) for n in names]
    elif spec.marginals is not None:
        if spec.method == "mst":
            raise InvalidQuery("MST chooses its own pairs; 'marginals' applies to fixed and aim.",
                               code="invalid_query")
        cliques = []
        for m in spec.marginals:
            clique = tuple(m)
            if len(set(clique)) != len(clique):
                raise InvalidQuery(f"Marginal {list(clique)} repeats a column.", code="invalid_query")
            for c in clique:
                if c not in domains:
                    raise InvalidQuery(f"Marginal column '{c}' is not among the synthesized columns.",
                                       code="unknown_column")
            cliques.append(clique)
    elif spec.method == "fixed":
        # default: a chain of neighbouring columns (a tree: cheap to fit; all pairs would make the junction
        # tree one huge clique). Name the pairs you care about with marginals=.
        cliques = list(zip(names, names[1:])) if len(names) > 1 else [(names[0],)]
    else:
        cliques = list(itertools.combinations(names, 2)) if len(names) > 1 else [(names[0],)]
    result = Plan(names, domains, cliques, dropped)
    for clique in cliques:
        if result.cells(clique) > MAX_CLIQUE_CELLS:
            raise InvalidQuery(f"Marginal {list(clique)} has {result.cells(clique)} cells (limit "
                               f"{MAX_CLIQUE_CELLS}); use fewer bins or smaller marginals.", code="invalid_query")
    return result
