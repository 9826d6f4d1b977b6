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
written by Polars' streaming engine (``sink_parquet``), so building it takes
bounded memory however many rows the dataset has (one file or a folder of
Parquet files in; one Parquet file out).
"""

from __future__ import annotations

import multiprocessing
import os
import re
import tempfile
from pathlib import Path

import polars as pl

from workbench.errors import ComputationFailed
from workbench.node import datafiles
from workbench.node.data import POLARS_TYPES, scan
from workbench.protocol import DatasetInfo

CODE_TYPE = pl.UInt32
FORMAT = "c2"  # bump when the encoding changes (c2: LZ4 pages)


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


def _sink(path: str, file_format: str, info_json: dict, consent: dict | None, tmp: str) -> None:
    """Write the copy: categories as codes, streamed (Polars reads, encodes and writes one morsel at a time)."""
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
    scan(path, file_format, info, consent=consent).with_columns(codes).sink_parquet(
        tmp, engine="streaming", compression="lz4")


def columnar_frame(folder: str | Path, path: str, file_format: str, info: DatasetInfo, columns: list[str],
                   consent: dict | None = None) -> pl.LazyFrame:
    """The copy of ``path`` at this dataset version (written first if missing), reading ``columns``."""
    folder = Path(folder)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", info.name)
    target = folder / f"{name}-{info.version.split(':')[-1]}-{FORMAT}.parquet"
    if not target.exists():
        _write(folder, target, name, path, file_format, info, consent)
    return pl.scan_parquet(target).select(columns)


def _write(folder: Path, target: Path, name: str, path: str, file_format: str, info: DatasetInfo,
           consent: dict | None) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        # In a child process that exits when the copy is written: what the writer allocated (and the allocator
        # keeps) is given back, so the worker that answers the next releases stays small (docs/scale.md).
        child = multiprocessing.get_context("spawn").Process(
            target=_sink, args=(path, file_format, info.model_dump(mode="json"), consent, tmp), daemon=True)
        child.start()
        child.join()
        if child.exitcode != 0:
            raise ComputationFailed(f"Dataset '{info.name}': its columnar copy could not be written.",
                                    code="dataset_unavailable")
        os.replace(tmp, target)  # atomic: a concurrent worker sees the old state or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    for old in folder.glob(f"{name}-*.parquet"):
        if old != target:
            try:
                old.unlink()
            except OSError:
                pass
