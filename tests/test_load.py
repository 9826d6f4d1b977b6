"""A small run of benchmarks/load.py: concurrent analysts, then the node's own books must balance."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_module():
    spec = importlib.util.spec_from_file_location("workbench_bench_load", ROOT / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_concurrent_analysts_no_overspend_valid_audit(tmp_path):
    load = load_module()
    data = load.patients_file(5_000, folder=tmp_path / "data")
    out = load.run(tmp_path / "run", rows=5_000, analysts=6, seconds=2.0, max_requests=400, data=data)
    assert out.problems == [], out.problems
    kinds = {(r["phase"], r["kind"]) for r in out.rows}
    assert {("replay", "replay"), ("release", "release"), ("mixed", "preview"), ("race", "race")} <= kinds
    # The race: 6 analysts x 3 concurrent releases of 0.01 against a lifetime cap of 0.05.
    race = out.phases["race"]
    refused = race.errors.get("race:dataset_budget_exceeded", 0)
    assert len(race.latencies["race"]) - refused == 5 and refused == 13
    assert out.ledger["overspent"] == [] and out.ledger["reserved"] == 0
    assert out.audit_ok, out.audit_text
