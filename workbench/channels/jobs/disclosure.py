"""Automatic statistical disclosure checks on every file a code job writes (and on its log).

The checks advise the owner; they release nothing. Every output stays held
until an owner releases it, flagged or not. What is checked:

* tables (CSV, JSON lists of records):
  - **row-level size**: at least half as many rows as the input;
  - **identifiers**: a value of an identifier column (type ``id``) appears;
  - **copied rows**: rows that equal input rows on 3+ shared columns (one of them a float column);
  - **small cells**: a row whose key columns (the dataset's category and bool columns it names) select
    fewer than ``min_cell_count`` input rows, or a count-named column (``n``, ``count``, ``*_n``, ...)
    holding a value between 1 and ``min_cell_count - 1``;
  - **dominance** (n, k): for each numeric column named after a numeric dataset column (``cost``,
    ``mean_cost``, ...), a cell whose ``n`` largest contributors make up more than ``k`` of its total;
* text (logs, notebooks, TXT, Markdown, other JSON, SVG): identifiers, and printed tables (a run of
  ``min_cell_count`` or more lines of the same shape, mostly numbers: what ``print(df)`` leaves);
* images: always flagged for manual review (no automatic check can read a plot).

Heuristics, stated as such in docs/code_jobs.md: a determined analyst can hide rows from them (e.g.
encoded); the owner's review is the control, the checks point at what to read first.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import polars as pl

from ...node.catalog import DatasetEntry, scan
from ...node.consent import consenting
from .wire import Check

COUNT_NAME = re.compile(r"^(n|count|counts|freq|frequency|size|num_\w+|n_\w+|\w+_n|\w+_count)$", re.IGNORECASE)
TOKEN = re.compile(r"[A-Za-z0-9_.:\-]+")
NUMBER = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
MAX_IDENTIFIERS = 5_000_000
MAX_TABLE_ROWS_FOR_GROUPS = 10_000


@dataclass(frozen=True)
class DataContext:
    """What the checks compare outputs with: the real rows (never shown to anyone) and the thresholds."""

    entry: DatasetEntry
    rows: int
    identifiers: frozenset[str]
    min_cell_count: int
    dominance_n: int
    dominance_k: float

    @property
    def frame(self) -> pl.LazyFrame:
        return _rows(self.entry)

    def columns_of(self, *types: str) -> set[str]:
        return {c.name for c in self.entry.info.columns if c.type in types}


def _rows(entry: DatasetEntry) -> pl.LazyFrame:
    """The rows the job could read (consenting rows only), as stored."""
    return consenting(scan(entry.config), entry.config)


def context(entry: DatasetEntry) -> DataContext:
    settings = entry.config.code_jobs
    frame = _rows(entry)
    rows = int(frame.select(pl.len()).collect().item())
    ids = sorted({c.name for c in entry.info.columns if c.type == "id"} | _unit_column(entry))
    values: set[str] = set()
    for name in ids:
        column = frame.select(pl.col(name).cast(pl.String)).head(MAX_IDENTIFIERS).collect().to_series()
        values |= {v for v in column.drop_nulls().unique().to_list() if len(v) >= 4}
    return DataContext(entry, rows, frozenset(values), settings.min_cell_count, settings.dominance_n,
                       settings.dominance_k)


def _unit_column(entry: DatasetEntry) -> set[str]:
    column = entry.info.privacy_unit.id_column
    return {column} if column else set()


def check(name: str, content: bytes, ctx: DataContext) -> list[Check]:
    """Every check that applies to one output file (by its extension), in the order an owner reads them."""
    extension = name.rsplit(".", 1)[-1].lower()
    if extension in ("png", "jpg", "jpeg"):
        return [Check(check="image", ok=False, detail="an image: no automatic check can read it; look at it")]
    text = content.decode("utf-8", errors="replace")
    if extension == "ipynb":
        text = notebook_text(text)
    checks = []
    if extension == "svg":
        checks.append(Check(check="image", ok=False, detail="an image (SVG): look at it"))
    table = _table(extension, text)
    if table is not None:  # a table's own checks replace the printed-rows heuristic
        return checks + table_checks(table, ctx) + text_checks(text, ctx)[:1]
    return checks + text_checks(text, ctx)


def _table(extension: str, text: str) -> pl.DataFrame | None:
    try:
        if extension == "csv":
            return pl.read_csv(io.StringIO(text), infer_schema_length=10_000)
        if extension == "json":
            records = json.loads(text)
            if isinstance(records, list) and records and all(isinstance(r, dict) for r in records):
                return pl.from_dicts(records, infer_schema_length=10_000)
    except Exception:  # noqa: BLE001 - not a table: the text checks still run
        return None
    return None


# ---------------------------------------------------------------- tables


def table_checks(table: pl.DataFrame, ctx: DataContext) -> list[Check]:
    rows = table.height
    half = max(ctx.rows // 2, 1)
    checks = [Check(check="row-level size", ok=rows < half,
                    detail=f"{rows} rows; the input has {ctx.rows}" + ("" if rows < half else
                                                                          ": as many rows as row-level data"))]
    checks.append(_copied_rows(table, ctx))
    checks += _small_cells(table, ctx)
    checks += _dominance(table, ctx)
    return checks


def _shared(table: pl.DataFrame, ctx: DataContext) -> list[str]:
    known = {c.name for c in ctx.entry.info.columns}
    return [c for c in table.columns if c in known]


def _copied_rows(table: pl.DataFrame, ctx: DataContext) -> Check:
    shared = _shared(table, ctx)
    floats = ctx.columns_of("float")
    if len(shared) < 3 or not floats & set(shared):
        return Check(check="copied rows", ok=True, detail="fewer than 3 input columns (one a float): not compared")
    as_text = [_text(c) for c in shared]
    try:
        hits = table.lazy().select(as_text).join(ctx.frame.select(as_text).unique(), on=shared, how="semi")
        copied = int(hits.select(pl.len()).collect().item())
    except Exception:  # noqa: BLE001 - incomparable types: say so rather than guess
        return Check(check="copied rows", ok=False, detail=f"columns {shared} could not be compared; read it")
    return Check(check="copied rows", ok=copied == 0,
                 detail=f"{copied} output rows equal input rows on {', '.join(shared)}")


def _text(column: str) -> pl.Expr:
    """A column as lower-case text, so ``True`` (pandas) and ``true`` (Polars) compare equal."""
    return pl.col(column).cast(pl.String).str.to_lowercase()


def _small_cells(table: pl.DataFrame, ctx: DataContext) -> list[Check]:
    out = []
    low = ctx.min_cell_count
    for name in table.columns:
        if COUNT_NAME.match(name) and table.schema[name].is_integer():
            small = table.filter((pl.col(name) > 0) & (pl.col(name) < low)).height
            out.append(Check(check=f"small counts in '{name}'", ok=small == 0,
                             detail=f"{small} cells between 1 and {low - 1}"))
    keys = [c for c in _shared(table, ctx) if c in ctx.columns_of("category", "bool")]
    if keys and table.height <= MAX_TABLE_ROWS_FOR_GROUPS:
        sizes = _group_sizes(table, ctx, keys)
        if sizes is None:
            out.append(Check(check="cell sizes", ok=False, detail=f"groups by {keys} could not be matched; read it"))
        else:
            small = [s for s in sizes if 0 < s < low]
            out.append(Check(check="cell sizes", ok=not small,
                             detail=f"{len(small)} of {len(sizes)} rows describe fewer than {low} input rows "
                                    f"(groups by {', '.join(keys)})"))
    return out


def _group_sizes(table: pl.DataFrame, ctx: DataContext, keys: list[str]) -> list[int] | None:
    as_text = [_text(k) for k in keys]
    try:
        counts = ctx.frame.select(as_text).group_by(keys).agg(pl.len().alias("__n"))
        joined = table.lazy().select(as_text).join(counts, on=keys, how="left", nulls_equal=True)
        return [int(v or 0) for v in joined.select("__n").collect().to_series().to_list()]
    except Exception:  # noqa: BLE001
        return None


def _dominance(table: pl.DataFrame, ctx: DataContext) -> list[Check]:
    n, k = ctx.dominance_n, ctx.dominance_k
    keys = [c for c in _shared(table, ctx) if c in ctx.columns_of("category", "bool")]
    out = []
    for value in sorted(ctx.columns_of("int", "float")):
        named = [c for c in table.columns if value in c.lower() and c not in keys and table.schema[c].is_numeric()]
        if not named:
            continue
        magnitude = pl.col(value).cast(pl.Float64).abs()
        share = (magnitude.top_k(n).sum() / magnitude.sum()).alias("__share")
        frame = ctx.frame.with_columns([_text(c) for c in keys])
        try:
            shares = (frame.group_by(keys).agg(share) if keys else frame.select(share)).collect()
        except Exception:  # noqa: BLE001
            continue
        if keys:
            wanted = table.select([_text(c) for c in keys]).unique()
            shares = shares.join(wanted, on=keys, how="semi")
        dominated = shares.filter(pl.col("__share") > k).height
        out.append(Check(check=f"dominance ({n}, {k:g}) on '{value}'", ok=dominated == 0,
                         detail=f"{dominated} cells where {n} contributors make up more than {k:.0%} of the total "
                                f"of {value} (columns {', '.join(named)})"))
    return out


# ---------------------------------------------------------------- text


def text_checks(text: str, ctx: DataContext) -> list[Check]:
    found = {t for t in TOKEN.findall(text) if t in ctx.identifiers} if ctx.identifiers else set()
    checks = [Check(check="identifiers", ok=not found,
                    detail=f"{len(found)} identifier values appear" + (f", e.g. {sorted(found)[0]}" if found else ""))]
    block = longest_printed_table(text)
    checks.append(Check(check="printed rows", ok=block < ctx.min_cell_count,
                        detail=f"the longest run of same-shaped lines of numbers is {block} lines"))
    return checks


def notebook_text(raw: str) -> str:
    """What an executed notebook shows: its cells' sources and every text output, line by line."""
    try:
        cells = json.loads(raw).get("cells", [])
    except (ValueError, AttributeError):
        return raw
    parts = []
    for cell in cells if isinstance(cells, list) else []:
        parts.append(_joined(cell.get("source", "")))
        for output in cell.get("outputs", []) or []:
            parts.append(_joined(output.get("text", "")))
            for media, value in (output.get("data") or {}).items():
                if media.startswith("text/"):
                    parts.append(_joined(value))
            parts += [str(t) for t in output.get("traceback", []) or []]
    return "\n".join(parts)


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def longest_printed_table(text: str) -> int:
    """The longest run of consecutive lines with the same number (3+) of tokens, a third or more of them (and
    at least 3) numbers: the shape ``print(df)`` leaves."""
    best = run = 0
    shape = None
    for line in text.splitlines():
        tokens = line.replace(",", " ").split()
        numeric = sum(1 for t in tokens if NUMBER.match(t.strip('"')))
        this = len(tokens) if numeric >= 3 and numeric * 3 >= len(tokens) else None
        run = run + 1 if this is not None and this == shape else (1 if this is not None else 0)
        shape = this
        best = max(best, run)
    return best
