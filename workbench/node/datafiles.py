"""A dataset's files: one CSV or Parquet file, or a folder of Parquet files (hive partitions allowed).

Everything here reads in bounded memory whatever the size of the data: the
version hash reads 1 MiB at a time, the row count reads Parquet metadata, and
the per-identifier contribution check runs Polars' streaming engine over the
identifier column alone, in as many hash buckets as keep each bucket's table
of identifiers small (:data:`IDS_PER_PASS`).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import polars as pl

from ..errors import ComputationFailed

#: Identifiers counted at once by the contribution check (its memory is about 60 bytes per identifier).
IDS_PER_PASS = 20_000_000
#: How Polars reads files in the node's processes: into buffers, two row groups ahead, never memory-mapped (a
#: mapped file's pages count in the process's resident memory: 3.0 GiB of a 9.5 GB file in the node process
#: while it checked the file's types at 1B rows). Polars' default read-ahead of 128 row groups held ~1.2 GB.
BUFFERED_READS = {"POLARS_FORCE_ASYNC": "1", "POLARS_ROW_GROUP_PREFETCH_SIZE": "2"}


def buffered_reads() -> None:
    """Make this process's Polars (and the processes it starts) read files as :data:`BUFFERED_READS` says,
    unless the owner set these variables."""
    for name, value in BUFFERED_READS.items():
        os.environ.setdefault(name, value)


def data_files(path: Path) -> list[Path]:
    """The files that hold a dataset: ``path`` itself, or every ``*.parquet`` under the folder ``path`` (sorted)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*.parquet") if p.is_file())
    return [path]


def stamp(path: Path) -> tuple[int, int]:
    """A cheap fingerprint of the files' state: (size, mtime_ns) of one file; for a folder, the total size and a
    hash of every file's relative path, size and mtime (a file added, removed, replaced or touched changes it)."""
    path = Path(path)
    if not path.is_dir():
        st = path.stat()
        return st.st_size, st.st_mtime_ns
    digest = hashlib.sha256()
    total = 0
    for file in data_files(path):
        st = file.stat()
        total += st.st_size
        digest.update(f"{file.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return total, int.from_bytes(digest.digest()[:8], "big") >> 1


def content_sha256(path: Path) -> str:
    """SHA-256 of the data (for a folder: of every file's relative path and bytes, in order), read 1 MiB at a time."""
    path = Path(path)
    digest = hashlib.sha256()
    for file in data_files(path):
        if path.is_dir():
            digest.update(f"{file.relative_to(path)}\0".encode())
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def check_stamp(path: str | Path, expected: tuple[int, int] | list[int] | None) -> None:
    """Refuse to compute on data that is not the version the node priced and labelled."""
    if expected is None:
        return
    try:
        current = stamp(Path(path))
    except OSError:
        current = None
    if current != tuple(expected):
        raise ComputationFailed("The dataset's file changed during this request; ask again (it is a new version).",
                                code="dataset_unavailable")


def scan(path: Path, file_format: str) -> pl.LazyFrame:
    """A lazy scan of the dataset (a folder is read as one table; hive partition columns become columns)."""
    if file_format == "csv":
        return pl.scan_csv(path)
    return pl.scan_parquet(path)


def row_count(lf: pl.LazyFrame) -> int:
    return lf.select(pl.len()).collect(engine="streaming").item()


def most_rows_per_id(lf: pl.LazyFrame, id_column: str, rows: int) -> int:
    """The largest number of rows any one identifier has, in bounded memory: ``ceil(rows / IDS_PER_PASS)``
    streaming passes over the identifier column, each counting the identifiers of one hash bucket."""
    passes = max(1, math.ceil(rows / IDS_PER_PASS))
    ids = lf.select(pl.col(id_column))
    worst = 0
    for bucket in range(passes):
        part = ids if passes == 1 else ids.filter(pl.col(id_column).hash(seed=7) % passes == bucket)
        count = (part.group_by(id_column).len().select(pl.col("len").max())
                 .collect(engine="streaming").item())
        worst = max(worst, count or 0)
    return worst
