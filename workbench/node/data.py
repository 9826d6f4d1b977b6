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
* rows whose person did not consent (:mod:`workbench.node.consent`) are
  removed before anything else reads them;
* a dataset is one file or a folder of Parquet files; the stamp and the
  content hash of both are in :mod:`workbench.node.datafiles`;
* the worker's task payload names the file, its format, its stamp, the
  consent rule and the public metadata (:func:`task_payload`): plain JSON,
  nothing executable.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ..protocol import DatasetInfo
from . import datafiles
from .consent import consent_spec, consenting

if TYPE_CHECKING:  # the catalogue imports this module
    from .catalog import DatasetEntry

__all__ = ["POLARS_TYPES", "check_stamp", "file_stamp", "raw_scan", "scan", "scan_task", "task_payload"]

#: The Polars type each declared column type is read as.
POLARS_TYPES: dict[str, pl.DataType] = {"int": pl.Int64, "float": pl.Float64, "category": pl.String,
                                        "bool": pl.Boolean, "string": pl.String, "id": pl.String}


def file_stamp(path: str | Path) -> tuple[int, int]:
    """What a dataset version was read from: ``(size, mtime_ns)`` of a file, or a pair for a folder."""
    return datafiles.stamp(Path(path))


check_stamp = datafiles.check_stamp  # refuse to compute on a file that is not the version priced and labelled


def raw_scan(path: str | Path, file_format: str) -> pl.LazyFrame:
    """The file (or folder) as it is, every row (the catalogue's checks of it against the metadata start here)."""
    return datafiles.scan(Path(path), file_format)


def scan(path: str | Path, file_format: str, info: DatasetInfo, columns: list[str] | None = None,
         consent: dict | None = None, rows: tuple[int, int] | None = None) -> pl.LazyFrame:
    """The owner's file, consenting rows only, ``columns`` (default: all declared) cast to their declared types,
    read lazily. ``consent``: the dataset's rule as :func:`workbench.node.consent.consent_spec` gives it;
    ``rows``: (offset, count) of the file's rows to read, counted before the consent rule removes any."""
    wanted = {c.name: POLARS_TYPES[c.type] for c in info.columns if columns is None or c.name in columns}
    if columns is not None:  # keep the caller's order
        wanted = {n: wanted[n] for n in columns if n in wanted}
    if file_format == "csv":
        lf = pl.scan_csv(path, schema_overrides=wanted)
    else:
        lf = pl.scan_parquet(path)
    if rows is not None:
        lf = lf.slice(*rows)
    return consenting(lf, consent).select([pl.col(n).cast(t) for n, t in wanted.items()])


def task_payload(entry: DatasetEntry, **extra: Any) -> dict[str, Any]:
    """The plain-JSON task a worker gets: public metadata, the file, its format and stamp, the consent rule,
    plus ``extra``."""
    return {"info": entry.info.model_dump(mode="json"), "path": str(entry.path), "format": entry.config.file_format,
            "stamp": list(entry.stamp), "consent": consent_spec(entry.config), **extra}


def scan_task(task: dict[str, Any], columns: list[str] | None = None) -> tuple[DatasetInfo, pl.LazyFrame]:
    """Worker side of :func:`task_payload`: the metadata and the checked, typed scan of the file."""
    info = DatasetInfo.model_validate(task["info"])
    check_stamp(task["path"], task.get("stamp"))
    return info, scan(task["path"], task["format"], info, columns, task.get("consent"))
