"""A small run of the load benchmark (benchmarks/loadkit.py): concurrent analysts, then the node's books balance."""

from __future__ import annotations

import pytest

from benchmarks import loadkit


@pytest.mark.slow
def test_concurrent_analysts_no_overspend_valid_audit(tmp_path):
    load = loadkit
    data = load.patients_file(5_000, folder=tmp_path / "data")
    out = load.run(tmp_path / "run", rows=5_000, analysts=6, seconds=2.0, max_requests=400, data=data)
    assert out.problems == [], out.problems
    kinds = {(r["phase"], r["kind"]) for r in out.rows}
    assert {("replay", "replay"), ("release", "release"), ("mixed", "preview"), ("race", "race")} <= kinds
    # The race: 6 analysts x 3 concurrent releases of 0.01 against a lifetime cap of 0.05.
    # Exactly the cap's worth wins (0.05 / 0.01); every other attempt is refused by a budget, none fails otherwise.
    race = out.phases["race"]
    refused = race.errors.get("race:dataset_budget_exceeded", 0) + race.errors.get("race:budget_exceeded", 0)
    assert set(race.errors) <= {"race:dataset_budget_exceeded", "race:budget_exceeded"}, dict(race.errors)
    assert len(race.latencies["race"]) - refused == 5 and refused >= 1
    assert out.ledger["overspent"] == [] and out.ledger["reserved"] == 0
    assert out.audit_ok, out.audit_text
