"""The CLI an owner uses, the package's public face, and the error tree."""

from __future__ import annotations

import subprocess
import sys

import pytest

import workbench as wb
from workbench import errors
from tests.conftest import make_config


def _cli(*args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_owner_cli_flow(tmp_path):
    config = str(make_config(tmp_path))
    assert "ok" in _cli("node", "check", "--config", config).stdout
    token = _cli("node", "user", "add", "alice", "--role", "analyst", "--config", config).stdout.strip()
    assert token.count(".") == 2 and len(token) > 100
    dup = _cli("node", "user", "add", "alice", "--role", "analyst", "--config", config, check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    out = _cli("node", "grant", "alice", "patients", "--purpose", "readmission study", "--epsilon", "2",
               "--delta", "1e-6", "--config", config).stdout
    assert "grant 1" in out
    bad = _cli("node", "grant", "alice", "nope", "--purpose", "x", "--epsilon", "1", "--config", config, check=False)
    assert bad.returncode == 2 and "unknown_dataset" in bad.stderr
    assert "alice" in _cli("node", "grants", "--config", config).stdout
    _cli("node", "revoke", "1", "--config", config)
    assert "revoked" in _cli("node", "grants", "--config", config).stdout
    assert "alice" in _cli("node", "user", "list", "--config", config).stdout
    assert "OK" in _cli("node", "audit", "verify", "--config", config).stdout


def test_bad_config_is_a_clear_error(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text("[node]\nname = 'x'\n[datasets.d]\npath = 'missing.csv'\ncolumns = {a = {type = 'wat'}}\n")
    proc = _cli("node", "check", "--config", str(path), check=False)
    assert proc.returncode == 2 and "invalid_config" in proc.stderr


def test_dataset_breaking_its_privacy_unit_is_not_served(tmp_path):
    import polars as pl
    import tomli_w
    import tomllib

    config = make_config(tmp_path)
    raw = tomllib.loads(config.read_text())
    frame = pl.read_parquet(raw["datasets"]["patients"]["path"])
    dup = pl.concat([frame, frame.head(1)])  # one patient now has two rows, but max_contributions = 1
    bad_path = tmp_path / "dup.parquet"
    dup.write_parquet(bad_path)
    raw["datasets"]["patients"]["path"] = str(bad_path)
    config.write_text(tomli_w.dumps(raw))
    proc = _cli("node", "check", "--config", str(config), check=False)
    assert proc.returncode == 1 and "max_contributions" in proc.stdout


def test_public_face_is_sorted_and_complete():
    assert wb.__all__ == sorted(wb.__all__)
    for name in wb.__all__:
        assert hasattr(wb, name), name
    for name in ("connect", "federation", "WorkbenchError", "BudgetExceeded", "NotAuthorized", "PrivacyError",
                 "InvalidQuery"):
        assert name in wb.__all__


def test_error_tree_has_one_root_and_every_code_maps():
    for code, cls in errors._BY_CODE.items():
        assert issubclass(cls, wb.WorkbenchError)
        assert code in errors.__doc__, f"code {code} missing from the drawn tree"
    assert issubclass(wb.PrivacyError, wb.NotAuthorized)
    assert errors.error_class_for("budget_exceeded") is wb.BudgetExceeded
    assert errors.error_class_for("something-new") is wb.WorkbenchError


def test_embedded_node_needs_no_server():
    node = wb.connect()
    assert node.embedded and node.info()["role"] == "analyst"
    ds = node.dataset("patients")
    left = ds.budget()["epsilon"]
    df = ds.mean("age").release(epsilon=0.3)
    assert 40 < df["estimate"].iloc[0] < 65
    assert ds.budget()["epsilon"] == pytest.approx(left - 0.3)
    with pytest.raises(wb.PrivacyError):
        ds.to_pandas()
    assert "<table" in ds._repr_html_() and "epsilon" in ds._repr_html_()
    assert "Preview" in repr(ds.count().preview(epsilon=0.1))
