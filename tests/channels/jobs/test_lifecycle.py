"""The honest flow in-process (real app, real sandbox): mock, submit, approve by hash, run, hold, release."""

from __future__ import annotations

import pytest

from workbench.channels.jobs import lifecycle
from workbench.errors import NotAuthorized
from workbench.node.auth import Principal

from .conftest import needs_bwrap
from .honest_analysis import honest

pytestmark = needs_bwrap


def test_honest_notebook_from_mock_to_released_outputs(jobs_node, tmp_path):
    ds = jobs_node["analyst"].dataset("patients")
    job = ds.code_job(honest(tmp_path / "analysis.ipynb"), parameters={"min_age": 30},
                      outputs=["summary.csv", "km_curve.png"])
    mock_run = job.run_on_mock()
    assert mock_run.ok, mock_run.error
    assert set(mock_run.outputs) == {"summary.csv", "km_curve.png"}

    job.submit(purpose="readmission study", note="KM by sex")
    assert job.status() == "pending"
    with pytest.raises(NotAuthorized):  # nothing leaves before an owner decides
        jobs_node["analyst"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    jobs_node["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={"reason": "reads aggregates only"})
    assert job.wait(timeout_s=300) == "held", job.info.error
    assert job.outputs() == {}  # held: nothing released yet
    owner_view = jobs_node["owner"].request("GET", f"/jobs/{job.job_id}")
    results = {r["name"]: r for r in owner_view["results"]}
    assert set(results) == {"summary.csv", "km_curve.png", "executed.ipynb"}
    assert not results["summary.csv"]["flagged"], [c for c in results["summary.csv"]["checks"] if not c["ok"]]
    assert results["km_curve.png"]["flagged"]  # images: manual review
    assert results["km_curve.png"]["preview"].startswith("data:image/png;base64,")  # the owner looks at it
    log = results["executed.ipynb"]["preview"]  # the executed notebook as read: cells and their printed output
    assert "adults.groupby" in log and "groups" in log and '"cell_type"' not in log, log[:500]
    held = lifecycle.held_files(jobs_node["service"], Principal("olga", "owner"), job.job_id)
    assert held["km_curve.png"].startswith(b"\x89PNG") and b"groups" in held["executed.ipynb"]
    with pytest.raises(NotAuthorized):
        lifecycle.held_files(jobs_node["service"], Principal("analyst", "analyst"), job.job_id)
    jobs_node["owner"].request("POST", f"/jobs/{job.job_id}/release",
                               json={"outputs": ["summary.csv", "km_curve.png"]})
    files = job.outputs()
    assert set(files) == {"summary.csv", "km_curve.png"}
    assert files["km_curve.png"].content.startswith(b"\x89PNG")
    assert (files["summary.csv"].frame()["n"] >= 10).all()
