"""The one dataset reader: declared types, lazy scans, the file stamp and the worker's task payload.

Every channel that reads a dataset's rows (DP, synthesis, HE/SMPC, FL, the
catalogue's checks) reads them through this module, so the rules below exist
once:

* a column is read as the type the owner *declared* in the public metadata
  (:data:`POLARS_TYPES`), never as whatever the file happens to hold;
* a worker computes only on the file the node priced and labelled: the task
  carries the file's ``(size, mtime_ns)`` stamp and :func:`check_stamp`
  refuses a file that changed since (a new dataset version must be charged
  as a new question);
* the worker's task payload names the file, its format, its stamp and the
  public metadata (:func:`task_payload`): plain JSON, nothing executable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..errors import ComputationFailed
from ..protocol import DatasetInfo

if TYPE_CHECKING:  # the catalogue imports this module
    from .catalog import DatasetEntry

__all__ = ["POLARS_TYPES", "check_stamp", "file_stamp", "raw_scan", "scan", "scan_task", "task_payload"]

#: The Polars type each declared column type is read as.
POLARS_TYPES: dict[str, pl.DataType] = {"int": pl.Int64, "float": pl.Float64, "category": pl.String,
                                        "bool": pl.Boolean, "string": pl.String, "id": pl.String}


def file_stamp(path: str | Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file: what a dataset version was read from."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def check_stamp(path: str | Path, stamp: tuple[int, int] | list[int] | None) -> None:
    """Refuse to compute on a file that is not the version the node priced and labelled."""
    if stamp is None:
        return
    if file_stamp(path) != tuple(stamp):
        raise ComputationFailed("The dataset's file changed during this request; ask again (it is a new version).",
                                code="dataset_unavailable")


def raw_scan(path: str | Path, file_format: str) -> pl.LazyFrame:
    """The file as it is (the catalogue's checks of it against the metadata start here)."""
    return pl.scan_csv(path) if file_format == "csv" else pl.scan_parquet(path)


def scan(path: str | Path, file_format: str, info: DatasetInfo, columns: list[str] | None = None) -> pl.LazyFrame:
    """The owner's file, ``columns`` (default: all declared) cast to their declared types, read lazily."""
    wanted = {c.name: POLARS_TYPES[c.type] for c in info.columns if columns is None or c.name in columns}
    if columns is not None:  # keep the caller's order
        wanted = {n: wanted[n] for n in columns if n in wanted}
    if file_format == "csv":
        lf = pl.scan_csv(path, schema_overrides=wanted)
    else:
        lf = pl.scan_parquet(path)
    return lf.select([pl.col(n).cast(t) for n, t in wanted.items()])


def task_payload(entry: DatasetEntry, **extra: Any) -> dict[str, Any]:
    """The plain-JSON task a worker gets: public metadata, the file, its format and stamp, plus ``extra``."""
    return {"info": entry.info.model_dump(mode="json"), "path": str(entry.path), "format": entry.config.file_format,
            "stamp": list(entry.stamp), **extra}


def scan_task(task: dict[str, Any], columns: list[str] | None = None) -> tuple[DatasetInfo, pl.LazyFrame]:
    """Worker side of :func:`task_payload`: the metadata and the checked, typed scan of the file."""
    info = DatasetInfo.model_validate(task["info"])
    check_stamp(task["path"], task.get("stamp"))
    return info, scan(task["path"], task["format"], info, columns)
