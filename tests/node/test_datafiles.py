"""Datasets as one file or a folder of Parquet files: stamps, versions, bounded-memory checks, the columnar copy."""

from __future__ import annotations

import os

import polars as pl
import pytest

from workbench.errors import ComputationFailed
from workbench.node import datafiles


def write_folder(folder, frame: pl.DataFrame) -> None:
    frame.write_parquet(folder, partition_by="region")


@pytest.fixture
def folder(tmp_path):
    frame = pl.DataFrame({"pid": [f"p{i % 300}" for i in range(1000)], "region": ["n", "s"] * 500,
                          "x": list(range(1000))})
    path = tmp_path / "lake"
    write_folder(path, frame)
    return path


def test_a_folder_is_read_as_one_table_with_its_partition_column(folder):
    lf = datafiles.scan(folder, "parquet")
    assert set(lf.collect_schema().names()) == {"pid", "region", "x"}
    assert datafiles.row_count(lf) == 1000
    assert len(datafiles.data_files(folder)) == 2


def test_adding_or_touching_a_file_changes_the_stamp_and_check_stamp_refuses(folder):
    before = datafiles.stamp(folder)
    version = datafiles.content_sha256(folder)
    datafiles.check_stamp(folder, before)
    extra = folder / "region=w"
    extra.mkdir()
    pl.DataFrame({"pid": ["z"], "x": [1]}).write_parquet(extra / "part.parquet")
    assert datafiles.stamp(folder) != before
    assert datafiles.content_sha256(folder) != version
    with pytest.raises(ComputationFailed):
        datafiles.check_stamp(folder, before)
    after = datafiles.stamp(folder)
    first = datafiles.data_files(folder)[0]
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert datafiles.stamp(folder) != after


def test_contribution_check_gives_the_same_answer_in_many_passes(folder, monkeypatch):
    lf = datafiles.scan(folder, "parquet")
    truth = lf.group_by("pid").len().select(pl.col("len").max()).collect().item()
    assert datafiles.most_rows_per_id(lf, "pid", 1000) == truth == 4
    monkeypatch.setattr(datafiles, "IDS_PER_PASS", 37)  # 28 hash buckets, one streaming pass each
    assert datafiles.most_rows_per_id(lf, "pid", 1000) == truth


def test_catalogue_serves_a_folder_and_refuses_one_that_breaks_max_contributions(folder, tmp_path):
    from workbench.node.catalog import Catalog
    from workbench.node.settings import NodeConfig

    columns = {"pid": {"type": "id"}, "region": {"type": "category", "categories": ["n", "s"]},
               "x": {"type": "int", "bounds": [0, 1000]}}
    config = NodeConfig.model_validate({"node": {"state_dir": str(tmp_path / "state")}, "datasets": {
        "ok": {"path": str(folder), "columns": columns, "privacy_unit": {"id_column": "pid", "max_contributions": 4}},
        "too_many": {"path": str(folder), "columns": columns,
                     "privacy_unit": {"id_column": "pid", "max_contributions": 3}}}})
    catalog = Catalog(config)
    assert [e.name for e in catalog.entries()] == ["ok"]
    assert catalog.get("ok").version.startswith("sha256:")
    assert "max_contributions=3" in catalog.problems()["too_many"]


def test_columnar_copy_of_a_folder_codes_public_categories_and_nulls_the_rest(tmp_path):
    from workbench.channels.dp.columnar import columnar_frame
    from workbench.protocol import DatasetInfo

    lake = tmp_path / "lake"
    write_folder(lake, pl.DataFrame({"region": ["n", "s", "mars", "s"], "x": [1, 2, 3, 4]}))
    info = DatasetInfo(name="lake", tier="private", max_rows=10, version="sha256:0123",
                       columns=[{"name": "region", "type": "category", "categories": ["s", "n"]},
                                {"name": "x", "type": "int", "bounds": [0, 10]}])
    copy = columnar_frame(tmp_path / "columnar", str(lake), "parquet", info, ["region", "x"]).collect()
    assert dict(zip(copy["x"].to_list(), copy["region"].to_list())) == {1: 1, 2: 0, 3: None, 4: 0}
    assert copy.schema["region"] == pl.UInt32
