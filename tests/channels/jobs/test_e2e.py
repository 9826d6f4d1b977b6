"""The honest flow over a real node process: mock → submit → approve (CLI) → run → held → release → collect;
then the same code on a new data version with only the outputs to release; every step in the audit log."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import workbench as wb
from tests.conftest import launch
from workbench.demo.data import patients

from .conftest import needs_bwrap
from .honest_analysis import honest

pytestmark = [needs_bwrap, pytest.mark.slow, pytest.mark.timeout(1800)]


def cli(node, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "workbench.cli", "node", *args, "--config", str(node.config_path)],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, WORKBENCH_OWNER="owner"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def node(tmp_path):
    running = launch(tmp_path)
    yield running
    running.stop()


def test_honest_job_end_to_end_with_a_rerun_on_new_data(node, tmp_path):
    cli(node, "mock", "publish", "patients", "--epsilon", "0.5", "--rows", "300", "--method", "independent",
        "--no-progress")
    analyst = wb.connect(node.url, token=node.analyst_token)
    owner = wb.connect(node.url, token=node.owner_token)
    ds = analyst.dataset("patients")
    job = ds.code_job(honest(tmp_path / "analysis.ipynb"), parameters={"min_age": 40},
                      outputs=["summary.csv", "km_curve.png"])
    assert job.run_on_mock().ok
    job.submit(purpose="readmission study", note="Kaplan-Meier by sex")
    assert job.status() == "pending"
    listed = cli(node, "jobs", "list", "--status", "pending")
    assert f"{job.job_id:4d} pending" in listed
    shown = cli(node, "jobs", "show", str(job.job_id))
    assert "min_age" in shown and "--- code ---" in shown and "adults.groupby" in shown

    cli(node, "jobs", "approve", str(job.job_id), "--reason", "aggregates and a curve")
    assert job.wait(timeout_s=600) == "held", job.info.error
    assert job.outputs() == {}
    shown = cli(node, "jobs", "show", str(job.job_id))
    assert "[ok] cell sizes" in shown and "[!!] image" in shown
    owner.request("POST", f"/jobs/{job.job_id}/release", json={"outputs": ["summary.csv", "km_curve.png"],
                                                                "reason": "checked"})
    first = job.outputs()
    assert set(first) == {"summary.csv", "km_curve.png"} and job.status() == "held"  # the log is still held
    cli(node, "jobs", "withhold", str(job.job_id), "--reason", "the log stays here")
    assert job.status() == "released"

    # a new version of the data: the approved hash runs again without a new approval; outputs are held again
    data = node.config_path.parent / "data" / "patients_hospital_a.parquet"
    patients(20_000, seed=99, id_prefix="A").write_parquet(data)
    again = job.rerun()
    assert again.info.status in ("approved", "running", "held") and again.info.approved_with_job == job.job_id
    assert again.info.dataset_version != job.info.dataset_version
    assert again.wait(timeout_s=600) == "held"
    assert again.outputs() == {}
    owner.request("POST", f"/jobs/{again.job_id}/release", json={"outputs": ["summary.csv"]})
    second = again.outputs()
    assert set(second) == {"summary.csv"}
    assert not second["summary.csv"].frame().equals(first["summary.csv"].frame())  # computed on the new rows

    actions = [(r["action"], r.get("details", {})) for r in owner.audit()]
    names = [a for a, _ in actions]
    for step in ("job_submit", "job_approve", "job_start", "job_held", "review_submit", "review_approve",
                 "review_reject", "job_released"):
        assert step in names, step
    collected = [d for a, d in actions if a == "release" and d.get("channel") == "jobs"]
    assert len(collected) == 3 and all(d.get("grant_id") and d.get("epsilon") == 0.0 for d in collected)
    submits = [d for a, d in actions if a == "job_submit"]
    assert submits[-1].get("approved_with_job") == job.job_id
    assert names.count("job_approve") == 1  # the re-run needed no second approval
    analyst.close()
    owner.close()
