"""A node-private columnar copy of a dataset, shaped for DP queries.

Grouping a million rows by a string column costs several times more than by
an integer one, mostly in decoding the strings. So, once per dataset version,
a worker writes a Parquet copy of the data in the node's state folder in which
every categorical column with a public category list holds the *code* of its
value in that list (a value outside the list becomes null, exactly as it falls
outside the public keys of a group-by). Queries compile against the codes and
the released table is decoded back to the public labels.

The copy holds the same private rows as the original and stays in the node's
state folder (same trust boundary); it is rebuilt when the file's version
changes and the previous copy is deleted. Nothing about it depends on the data
but the rows themselves: the codes come from public metadata only. It is
written by Polars' streaming engine (``sink_parquet``) as a folder of part
files, each part (:data:`ROWS_PER_PART` rows of the owner's data) by a fresh
child process, so building it takes the same bounded memory however many rows
the dataset has (one file or a folder of Parquet files in; a folder of Parquet
parts out, read back as one table in part order).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import tempfile
from pathlib import Path

import polars as pl

from workbench.errors import ComputationFailed
from workbench.node import datafiles
from workbench.node.data import POLARS_TYPES, scan
from workbench.protocol import DatasetInfo

CODE_TYPE = pl.UInt32
FORMAT = "c3"  # bump when the encoding changes (c2: LZ4 pages; c3: a folder of parts)
#: Rows of the owner's data per part of the copy. One process writing a whole 1B-row copy grew from 0.85 to 1.67
#: GiB resident (a new ``sink_parquet`` per slice in the same process: 1.54 GiB); a fresh process per part keeps
#: the writer's peak that of one part, whatever the row count (docs/scale.md).
ROWS_PER_PART = 25_000_000


def coded_columns(info: DatasetInfo) -> dict[str, list]:
    """Columns stored as codes: categorical ones with a public category list (code = position in it)."""
    return {c.name: list(c.categories) for c in info.columns if c.type == "category" and c.categories}


def schema(info: DatasetInfo) -> dict[str, pl.DataType]:
    coded = coded_columns(info)
    return {c.name: CODE_TYPE if c.name in coded else POLARS_TYPES[c.type] for c in info.columns}


def schema_frame(info: DatasetInfo, columns: list[str]) -> pl.LazyFrame:
    """An empty frame with the copy's schema: enough to compile and price a query (previews read no data)."""
    full = schema(info)
    return pl.LazyFrame(schema={n: full[n] for n in columns})


def _sink(path: str, file_format: str, info_json: dict, consent: dict | None, rows: tuple[int, int] | None,
          part: str) -> None:
    """Write one part of the copy: the owner's ``rows`` (offset, count; ``None``: all), categories as codes,
    streamed (Polars reads, encodes and writes one morsel at a time)."""
    # The owner's file is read into buffers (not memory-mapped: a mapped file's pages count in the resident memory
    # of the process, 8.9 GiB of a 9.5 GB file at 1B rows), two row groups ahead (Polars' default prefetches 128
    # row groups, ~1.2 GB of this benchmark's file): at 100M rows the writer peaked at 0.86 GiB resident instead
    # of 1.50 GiB mapped or 1.67 GiB with the default prefetch (docs/scale.md).
    datafiles.buffered_reads()
    info = DatasetInfo.model_validate(info_json)
    codes = []
    for column, values in coded_columns(info).items():
        labels = [str(v) for v in values]
        # An Enum cast streams (replace_strict held every row in memory: 11 GB at 100M rows); a value outside
        # the public list becomes null.
        codes.append(pl.col(column).cast(pl.Enum(labels), strict=False).to_physical().cast(CODE_TYPE))
    # LZ4, not Polars' default zstd: every release decompresses the columns it reads, and zstd cost ~1 s of
    # CPU more per release at 100M rows (2.7 vs 1.5 s to scan region and cost), for a 6% smaller copy.
    scan(path, file_format, info, consent=consent, rows=rows).with_columns(codes).sink_parquet(
        part, engine="streaming", compression="lz4")


def _slices(path: str, file_format: str) -> list[tuple[int, int] | None]:
    """The owner's rows cut into parts of :data:`ROWS_PER_PART` (Parquet: a slice reads only its row groups; a
    CSV, which Polars can only slice by reading from its start, is one part)."""
    if file_format == "csv":
        return [None]
    total = datafiles.row_count(datafiles.scan(Path(path), file_format))  # Parquet metadata only
    return [(start, ROWS_PER_PART) for start in range(0, max(total, 1), ROWS_PER_PART)]


def _safe_name(info: DatasetInfo) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", info.name)


def copy_path(folder: str | Path, info: DatasetInfo) -> Path:
    """Where the copy of this dataset version lives (a folder of parts once written)."""
    return Path(folder) / f"{_safe_name(info)}-{info.version.split(':')[-1]}-{FORMAT}"


def columnar_frame(folder: str | Path, path: str, file_format: str, info: DatasetInfo, columns: list[str],
                   consent: dict | None = None) -> pl.LazyFrame:
    """The copy of ``path`` at this dataset version (written first if missing), reading ``columns``."""
    target = copy_path(folder, info)
    if not target.exists():
        _write(Path(folder), target, _safe_name(info), path, file_format, info, consent)
    return pl.scan_parquet(datafiles.data_files(target)).select(columns)


def ensure(task: dict) -> dict:
    """Worker task ``dp.copy``: write this dataset version's copy if it is missing. The node runs it before the gate
    charges a release, under its own time limit (``copy_timeout_s``): at a billion rows the copy takes minutes, and
    a release that timed out while copying would keep its charge. Releases nothing."""
    info = DatasetInfo.model_validate(task["info"])
    datafiles.check_stamp(task["path"], task.get("stamp"))
    columnar_frame(task["columnar"], task["path"], task["format"], info, [], task.get("consent"))
    return {"copy": copy_path(task["columnar"], info).name}


def _write(folder: Path, target: Path, name: str, path: str, file_format: str, info: DatasetInfo,
           consent: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    info_json = info.model_dump(mode="json")
    try:
        for index, rows in enumerate(_slices(path, file_format)):
            _write_part(info, (path, file_format, info_json, consent, rows, f"{tmp}/part-{index:06d}.parquet"))
        try:
            os.replace(tmp, target)  # atomic: a concurrent worker sees no copy or the whole copy
        except OSError:
            if not target.is_dir():  # else a concurrent worker wrote the same copy first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in folder.iterdir():
        if old == target or not re.fullmatch(rf"{re.escape(name)}-[0-9a-f]+-c\d+(\.parquet)?", old.name):
            continue  # another dataset's copy (its name may start with this one's)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)  # a copy of an earlier format


def _write_part(info: DatasetInfo, args: tuple) -> None:
    """:func:`_sink` in a child process that exits when its part is written: what the writer allocated (and the
    allocator keeps) is given back, so neither the next part nor the worker that answers releases inherits it."""
    child = multiprocessing.get_context("spawn").Process(target=_sink, args=args, daemon=True)
    child.start()
    child.join()
    if child.exitcode != 0:
        raise ComputationFailed(f"Dataset '{info.name}': its columnar copy could not be written.",
                                code="dataset_unavailable")
