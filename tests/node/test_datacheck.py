"""`node check`'s declared-type check accepts exactly what the node's reader reads (issue 16, finding 2).

A value the check lets through but the worker cannot parse makes every release on the dataset fail after
its charge; a value the check refuses but the worker reads takes a good dataset offline. Both directions are
tried on the padding, signs, spellings and sizes owners' CSV files hold.
"""

from __future__ import annotations

import csv

import polars as pl
import pytest

from workbench.node.data import scan
from workbench.node.datacheck import scan_as_stored, type_problems
from workbench.node.settings import ColumnConfig, DatasetConfig

VALUES = {
    "int": ["17", " 17", "\t17", "+17", "17 ", "17\t", "017", "-0", "17.0", "1e3", "0x11", "1_000", "  ",
            "9223372036854775807", "9223372036854775808", "17.5"],
    "float": ["1.5", " 1.5", "1.5 ", "+1.5", ".5", "5.", "1e3", "1E-3", "NaN", "nan", " nan", "inf", "-inf",
              "Infinity", "1,5", "1.5.1", "  "],
    "bool": ["true", "True", "TRUE", "false", "False", " true", "true ", "1", "0", "yes", "  "],
}


def _reads(path, declared: ColumnConfig) -> bool:
    """Does the node's own reader (what every worker uses) read the file as declared?"""
    info = DatasetConfig(path=path, max_rows=10, columns={"x": declared}).public_info("d", "v1")
    try:
        scan(path, "csv", info).collect()
    except pl.exceptions.PolarsError:
        return False
    return True


@pytest.mark.parametrize("declared,value", [(t, v) for t, values in VALUES.items() for v in values])
def test_the_check_accepts_exactly_what_the_reader_reads(tmp_path, declared, value):
    path = tmp_path / "d.csv"
    with path.open("w", newline="") as out:
        csv.writer(out).writerows([["x", "y"], [value, "1"]])
    column = ColumnConfig(type=declared, bounds=None if declared == "bool" else [0, 100])
    problems = type_problems(scan_as_stored(path, "csv"), {"x": column})
    assert (problems == []) == _reads(path, column), (value, problems)
    if problems:
        assert problems == [f"column 'x' row 1: a value cannot be read as {declared} (its declared type)"]
