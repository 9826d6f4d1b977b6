"""Does the owner's file hold what its config declares? Every value, every declared type and category set.

A release computed on a column whose values cannot be read as the declared
type fails inside the worker after it was charged, so the node checks the
whole file once per dataset version and refuses to serve a dataset that fails
(``dataset_unavailable``, nothing charged). Values outside declared bounds
are fine (they are clipped); values outside a category list are fine (they
fall outside the public keys); values that cannot be parsed as the declared
type (``17.5`` in an ``int`` column, ``"0.0"`` in a column with integer
categories, ``"yes"`` in a ``bool`` column) are not.

The check runs on a lazy scan with Polars' streaming engine, so the file is
read in chunks. A problem names the column and the first bad row (1-based,
header not counted), never the value of a private column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import polars as pl

from .settings import ColumnConfig, DatasetConfig

_ROW = "__workbench_row"
_TRUE_FALSE = ["true", "false"]


def scan_as_stored(path: Path, file_format: str) -> pl.LazyFrame:
    """The file as stored: a CSV with every column as text (no type guessing), a Parquet file as typed."""
    if file_format == "csv":
        return pl.scan_csv(path, infer_schema=False)
    return pl.scan_parquet(path)


def _expected(column: ColumnConfig) -> str | None:
    """The type every value must parse as: int, float or bool; None when any value will do."""
    if column.type in ("int", "float", "bool"):
        return column.type
    if column.type == "category" and column.categories:
        if all(isinstance(c, bool) for c in column.categories):
            return "bool"
        if all(isinstance(c, int) and not isinstance(c, bool) for c in column.categories):
            return "int"
    return None


def _unreadable(name: str, dtype: pl.DataType, expected: str) -> pl.Expr:
    """True where a present value cannot be read as ``expected``."""
    value = pl.col(name)
    if dtype == pl.String:  # as the node's CSV reader parses: see tests/node/test_datacheck.py
        if expected == "bool":  # true/false in any case, nothing around them
            present, bad = value != "", ~value.str.to_lowercase().is_in(_TRUE_FALSE)
        else:  # blanks alone are missing; blanks before a number are skipped, blanks after it are not
            present = value.str.strip_chars() != ""
            bad = value.str.strip_chars_start().cast(pl.Int64 if expected == "int" else pl.Float64,
                                                     strict=False).is_null()
        return value.is_not_null() & present & bad
    if expected == "bool":
        if dtype == pl.Boolean:
            return pl.lit(False)
        return value.is_not_null() & (~value.is_in([0, 1]) if dtype.is_integer() else pl.lit(True))
    if dtype.is_integer() or (expected == "float" and dtype.is_numeric()):
        return pl.lit(False)
    if dtype.is_float():  # an int column (or integer categories) holding a fraction, NaN or infinity
        return value.is_not_null() & (~value.is_finite() | (value != value.floor()))
    return value.is_not_null()  # e.g. dates or booleans where numbers are declared


def type_problems(lf: pl.LazyFrame, columns: Mapping[str, ColumnConfig], private: bool = True) -> list[str]:
    """One sentence per declared column holding a value that cannot be read as its declared type.

    ``lf`` is a lazy scan of the file as stored (see :func:`scan_as_stored`); read in one streaming pass.
    With ``private``, the sentence never quotes the value.
    """
    schema = lf.collect_schema()
    checks = {}
    for name, column in columns.items():
        expected = _expected(column)
        if expected is not None and name in schema:
            checks[name] = (expected, _unreadable(name, schema[name], expected))
    if not checks:
        return []
    first_bad = (lf.with_row_index(_ROW)
                 .select([pl.col(_ROW).filter(bad).first().alias(name) for name, (_, bad) in checks.items()])
                 .collect(engine="streaming"))
    problems = []
    for name, (expected, _) in checks.items():
        row = first_bad[name][0]
        if row is None:
            continue
        what = "categories" if columns[name].type == "category" else "type"
        sentence = (f"column '{name}' row {row + 1}: a value cannot be read as {expected} (its declared {what})")
        if not private:
            value = lf.select(pl.col(name)).slice(row, 1).collect().item()
            sentence += f": {str(value)[:40]!r}"
        problems.append(sentence)
    return problems


def check_declared_types(config: DatasetConfig) -> list[str]:
    """:func:`type_problems` for a configured dataset's file."""
    return type_problems(scan_as_stored(config.path, config.file_format), config.columns,
                         private=config.tier != "open")
