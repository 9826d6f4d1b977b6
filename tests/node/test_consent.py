"""The data subject's say: opted-out people have no influence on anything the node computes or releases.

The proof is two-fold. (1) Every channel's read path (DP engine and its columnar copy, HE/SMPC,
synthesis, federated learning, open rows, the file a code job reads) yields exactly the same frame
for two files that differ only in opted-out people's rows, so every mechanism (a function of that frame and fresh noise) has
the same output distribution on both. (2) On a real node, DP releases count consenting people only,
and a new opt-out is a new dataset version (the columnar copy is rebuilt, old answers stop replaying).
"""

from __future__ import annotations

import os
import signal
import tomllib

import polars as pl
import pytest
import tomli_w

import workbench as wb
from workbench.node.consent import consent_spec, consenting, fingerprint
from workbench.node.settings import NodeConfig

from tests.conftest import make_config, provision, start_node

OPTED_OUT = 5_000  # the first 5 000 patients of hospital A's 20 000


def with_consent(root, consent: dict, data_path=None):
    """A demo node config whose patients dataset carries ``consent`` (and optionally another data file)."""
    path = make_config(root)
    raw = tomllib.loads(path.read_text())
    raw["datasets"]["patients"]["consent"] = consent
    if data_path is not None:
        raw["datasets"]["patients"]["path"] = str(data_path)
    path.write_text(tomli_w.dumps(raw))
    return path


def opted_out_ids(config: NodeConfig) -> list[str]:
    ds = config.datasets["patients"]
    return pl.read_parquet(ds.path)["patient_id"].head(OPTED_OUT).to_list()


@pytest.fixture
def twins(tmp_path):
    """Two configs over files that differ only in the opted-out people's rows (an opt-out list names them)."""
    first = with_consent(tmp_path / "a", {"opt_out_file": "opt-out.txt"})
    config = NodeConfig.load(first)
    ids = opted_out_ids(config)
    (tmp_path / "a" / "opt-out.txt").write_text("# people who said no\n" + "\n".join(ids) + "\n")
    raw = pl.read_parquet(config.datasets["patients"].path)
    out = pl.col("patient_id").is_in(ids)
    changed = raw.with_columns(age=pl.when(out).then(100).otherwise(pl.col("age")),
                               cost=pl.when(out).then(50_000.0).otherwise(pl.col("cost")),
                               diagnosis=pl.when(out).then(pl.lit("cancer")).otherwise(pl.col("diagnosis")))
    (tmp_path / "b").mkdir()
    changed.write_parquet(tmp_path / "b" / "patients.parquet")
    (tmp_path / "b" / "opt-out.txt").write_text("\n".join(ids))
    second = with_consent(tmp_path / "b", {"opt_out_file": "opt-out.txt"}, tmp_path / "b" / "patients.parquet")
    return config, NodeConfig.load(second)


def read_paths(config: NodeConfig, tmp_path) -> dict[str, pl.DataFrame]:
    """What each channel's worker reads, given the task the node would send it."""
    from workbench.channels.dp.columnar import columnar_frame
    from workbench.node.data import scan as source_frame
    from workbench.channels.fl.worker import _read
    from workbench.channels.fl.trainers import feature_map
    from workbench.node.catalog import Catalog, scan
    from workbench.node.data import scan_task
    from workbench.channels.synth.worker import _scan
    from workbench.channels.jobs.worker import data_for_sandbox

    entry = Catalog(config).get("patients")
    path, fmt, info, consent = str(entry.path), entry.config.file_format, entry.info, consent_spec(entry.config)
    names = [c.name for c in info.columns]
    task = {"info": info.model_dump(mode="json"), "path": path, "format": fmt, "stamp": list(entry.stamp),
            "consent": consent}
    fmap = feature_map(info, "classification", ["age", "bmi"], "readmitted")
    X, y = _read(task, fmap)
    return {
        "dp": source_frame(path, fmt, info, names, consent).collect(),
        "dp-columnar": columnar_frame(tmp_path / "columnar", path, fmt, info, names, consent).collect(),
        "he-smpc": scan_task(task)[1].collect(),  # HE and SMPC contributions read through scan_task
        "synth": _scan(task, info, [c.name for c in info.columns if c.type != "id"]).collect(),
        "fl": pl.DataFrame({"x0": X[:, 0], "x1": X[:, 1], "y": y}),
        "open-rows": consenting(scan(entry.config), entry.config).select(names).collect(),
        # the one file a code job's sandbox may read
        "code-jobs": pl.read_parquet(data_for_sandbox(entry, mkdir(tmp_path / "job-scratch"))).select(names),
    }


def mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_every_channel_reads_the_same_rows_whatever_the_opted_out_rows_say(twins, tmp_path):
    a, b = twins
    assert pl.read_parquet(a.datasets["patients"].path).equals(pl.read_parquet(b.datasets["patients"].path)) is False
    seen_a, seen_b = read_paths(a, tmp_path / "a-cols"), read_paths(b, tmp_path / "b-cols")
    for channel in seen_a:
        assert seen_a[channel].equals(seen_b[channel]), f"{channel}: opted-out rows reached the computation"
        assert seen_a[channel].height == 20_000 - OPTED_OUT, channel
    assert not seen_a["open-rows"]["patient_id"].is_in(opted_out_ids(a)).any()


def test_consent_column(tmp_path):
    """A boolean column: only rows where it is true are used (false and missing mean no)."""
    config = NodeConfig.load(make_config(tmp_path))
    raw = pl.read_parquet(config.datasets["patients"].path)
    said = raw.with_columns(consent=pl.when(pl.int_range(pl.len()) % 4 == 0).then(None)
                            .otherwise(pl.int_range(pl.len()) % 4 != 1))
    said.write_parquet(tmp_path / "said.parquet")
    config = NodeConfig.load(with_consent(tmp_path / "c", {"column": "consent"}, tmp_path / "said.parquet"))
    kept = consenting(pl.scan_parquet(tmp_path / "said.parquet"), config.datasets["patients"]).collect()
    assert kept.height == 10_000 and kept["consent"].all()


def test_config_is_checked(tmp_path):
    with pytest.raises(wb.WorkbenchError, match="exactly one"):
        NodeConfig.load(with_consent(tmp_path / "x", {"column": "c", "opt_out_file": "o.txt"}))
    path = make_config(tmp_path / "y")
    raw = tomllib.loads(path.read_text())
    raw["datasets"]["iris"]["consent"] = {"opt_out_file": "o.txt"}  # iris has no identifier privacy unit
    path.write_text(tomli_w.dumps(raw))
    with pytest.raises(wb.WorkbenchError, match="privacy_unit.id_column"):
        NodeConfig.load(path)


def test_real_node_releases_count_consenting_people_and_a_new_opt_out_is_a_new_version(tmp_path):
    path = with_consent(tmp_path, {"opt_out_file": "opt-out.txt"})
    ids = opted_out_ids(NodeConfig.load(path))
    opt_out = tmp_path / "opt-out.txt"
    opt_out.write_text("\n".join(ids[:1000]))
    accounts = provision(path)
    proc = start_node(path)
    try:
        node = wb.connect(f"http://127.0.0.1:{tomllib.loads(path.read_text())['node']['port']}",
                          token=accounts.analyst_token)
        ds = node.dataset("patients")
        before = ds.count().release(epsilon=3.0)["estimate"].iloc[0]
        assert abs(before - 19_000) < 50, "the 1 000 opted-out people are not counted"
        version = ds.schema.version
        opt_out.write_text("\n".join(ids))  # 4 000 more people opt out
        after = node.dataset("patients")
        assert after.schema.version != version, "a new opt-out is a new dataset version"
        assert abs(after.count().release(epsilon=3.0)["estimate"].iloc[0] - 15_000) < 50
        node.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def test_fingerprint_follows_the_list(twins, tmp_path):
    a, _ = twins
    ds = a.datasets["patients"]
    before = fingerprint(ds)
    ds.consent.opt_out_file.write_text("nobody")
    assert fingerprint(ds) != before and fingerprint(NodeConfig.load(make_config(tmp_path / "z"))
                                                    .datasets["patients"]) == ""
