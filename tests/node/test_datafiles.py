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


@pytest.mark.parametrize("source", ["file", "folder"])
def test_columnar_copy_in_parts_holds_the_same_rows_in_order_as_in_one_part(tmp_path, monkeypatch, source):
    """The copy is written in parts of ROWS_PER_PART owner rows (each by its own process): the same rows, order and
    types as one part, the consent rule applied to every part, and an older copy of the dataset deleted."""
    from workbench.channels.dp import columnar
    from workbench.protocol import DatasetInfo

    n = 25  # three parts of at most 10 rows
    frame = pl.DataFrame({"region": [["n", "s", "mars"][i % 3] for i in range(n)], "x": list(range(n)),
                          "ok": [i % 5 != 0 for i in range(n)]})
    path = tmp_path / "lake"
    if source == "folder":
        write_folder(path, frame)
    else:
        frame.write_parquet(path)
    info = DatasetInfo(name="lake", tier="private", max_rows=1000, version="sha256:0123",
                       columns=[{"name": "region", "type": "category", "categories": ["s", "n"]},
                                {"name": "x", "type": "int", "bounds": [0, 1000]}])
    consent = {"column": "ok", "id_column": None, "opt_out_file": None}
    whole = columnar.columnar_frame(tmp_path / "one", str(path), "parquet", info, ["region", "x"], consent).collect()
    monkeypatch.setattr(columnar, "ROWS_PER_PART", 10)
    old = tmp_path / "parts" / "lake-0000-c3"
    old.mkdir(parents=True)
    parts = columnar.columnar_frame(tmp_path / "parts", str(path), "parquet", info, ["region", "x"], consent).collect()
    written = sorted((tmp_path / "parts").rglob("*.parquet"))
    assert len(written) == 3 and all(p.parent.name == "lake-0123-c3" for p in written)
    assert not old.exists()  # the previous version's copy is gone
    assert parts.equals(whole) and parts.schema == whole.schema
    expected = frame.filter(pl.col("ok")) if source == "file" else frame.filter(pl.col("ok")).sort("region", maintain_order=True)
    assert parts["x"].to_list() == expected["x"].to_list()
    assert parts["region"].to_list() == [{"s": 0, "n": 1}.get(r) for r in expected["region"]]


def test_the_copy_is_written_before_the_charge_so_a_copy_that_times_out_costs_nothing(tmp_path):
    """A billion-row file takes minutes to copy: the node writes the copy before the gate charges, under its own
    time limit (``copy_timeout_s``), so a first release that cannot wait for it fails without spending."""
    from starlette.testclient import TestClient

    from tests.conftest import make_config
    from workbench.demo.nodes import ensure_accounts
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig
    from workbench.server import create_app

    service = NodeService(NodeConfig.load(make_config(tmp_path, copy_timeout_s=0.01)), start_workers=False)
    try:
        client = TestClient(create_app(service), raise_server_exceptions=False)
        analyst = {"Authorization": f"Bearer {ensure_accounts(service).analyst_token}"}
        budget = lambda: client.get("/v1/datasets/patients/budget", headers=analyst).json()  # noqa: E731
        before = budget()
        answer = client.post("/v1/datasets/patients/dp/release", headers=analyst,
                             json={"query": {"kind": "count"}, "epsilon": 0.5})
        assert answer.status_code == 503 and answer.json()["code"] == "computation_timeout", answer.text  # transient
        assert budget() == before, "no charge for a release whose copy could not be written in time"
        assert not list((service.config.node.state_dir / "columnar").glob("patients-*-c*")), "no copy left"
    finally:
        service.close()
