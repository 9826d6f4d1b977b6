"""Who decides, what a hash approves, and the DP channel from inside a job (real app, real sandbox)."""

from __future__ import annotations

import json

import pytest

from workbench.errors import InvalidQuery, NotAuthorized

from .conftest import needs_bwrap
from .honest_analysis import SUMMARY, write_notebook

pytestmark = needs_bwrap


def submit(nodes, user: str, path, **kw):
    job = nodes[user].dataset("patients").code_job(path, **kw)
    return job.submit(purpose="decisions test")


def test_nobody_decides_their_own_code_and_analysts_decide_nothing(tight_node, tmp_path):
    path = tmp_path / "own.py"
    path.write_text("print('hi')\n")
    # the demo owner has no grant on patients: an owner submitting needs one like anyone else
    with pytest.raises(NotAuthorized) as no_grant:
        submit(tight_node, "owner", path, outputs=["a.csv"])
    assert no_grant.value.code == "no_grant"
    job = submit(tight_node, "analyst", path, outputs=["a.csv"])
    with pytest.raises(NotAuthorized):
        tight_node["analyst"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    tight_node["olga"].request("POST", f"/jobs/{job.job_id}/reject", json={"reason": "prints only"})
    assert job.status() == "rejected" and job.info.reason == "prints only"
    with pytest.raises(InvalidQuery) as again:
        tight_node["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    assert again.value.code == "not_pending"
    job.wait(until=("rejected",), timeout_s=5)
    assert job.outputs() == {}


def test_a_changed_cell_needs_a_new_approval_and_the_owner_sees_the_diff(tight_node, tmp_path):
    first = submit(tight_node, "analyst", write_notebook(tmp_path / "study.ipynb", SUMMARY),
                   outputs=["summary.csv"])
    tight_node["owner"].request("POST", f"/jobs/{first.job_id}/approve", json={})
    # the identical job on the same data version is the same job
    same = submit(tight_node, "analyst", tmp_path / "study.ipynb", outputs=["summary.csv"])
    assert same.job_id == first.job_id
    # a changed cell is a new hash: pending, with a diff against the approved version
    changed = SUMMARY.replace('summary["n"] >= 10', 'summary["n"] >= 1')
    second = submit(tight_node, "analyst", write_notebook(tmp_path / "study.ipynb", changed),
                    outputs=["summary.csv"])
    assert second.job_id != first.job_id and second.status() == "pending"
    assert second.info.code_hash != first.info.code_hash
    view = tight_node["owner"].request("GET", f"/jobs/{second.job_id}")
    assert view["previous_approved_job"] == first.job_id
    assert '-summary = summary[summary["n"] >= 10]' in view["diff"]
    assert '+summary = summary[summary["n"] >= 1]' in view["diff"]
    # other parameters are another approval too
    third = submit(tight_node, "analyst", tmp_path / "study.ipynb", outputs=["summary.csv"],
                   parameters={"min_age": 99})
    assert third.status() == "pending" and third.info.approval_hash != second.info.approval_hash
    analyst_view = tight_node["analyst"].request("GET", f"/jobs/{second.job_id}")
    assert analyst_view["diff"] is None  # the diff is the owner's view
    first.wait(timeout_s=240)


def test_dp_answers_from_inside_a_job_are_charged_to_the_grant_within_the_approved_epsilon(tight_node, tmp_path):
    code = """import json, os, workbench_job
answers = {}
first = workbench_job.dp_release({"kind": "count"}, epsilon=0.2)
again = workbench_job.dp_release({"kind": "count"}, epsilon=0.2)
answers["count"] = float(first["estimate"].iloc[0])
answers["replay_identical"] = bool(first.equals(again))
try:
    workbench_job.dp_release({"kind": "mean", "column": "age"}, epsilon=0.4)
    answers["over_budget"] = "ALLOWED"
except RuntimeError as exc:
    answers["over_budget"] = str(exc).split(":")[0]
with open(os.path.join(output_dir, "answers.json"), "w") as fh:
    json.dump(answers, fh)
"""
    path = tmp_path / "dp.py"
    path.write_text(code)
    ds = tight_node["analyst"].dataset("patients")
    ds.count().release(epsilon=0.01)  # start the node's DP worker (cold, it takes most of the job's wall time)
    before = ds.budget()["epsilon"]
    with pytest.raises(InvalidQuery):  # more than the dataset's max_dp_epsilon (1.0)
        ds.code_job(path, outputs=["answers.json"], dp_epsilon=5.0).submit()
    job = ds.code_job(path, outputs=["answers.json"], dp_epsilon=0.5).submit(purpose="dp inside")
    tight_node["owner"].request("POST", f"/jobs/{job.job_id}/approve", json={})
    assert job.wait(timeout_s=240) == "held", job.info.error
    info = job.refresh()
    assert info.dp_spent == pytest.approx(0.2)
    assert [round(d.epsilon, 6) for d in info.dp_releases] == [0.2, 0.0]  # the second was a free replay
    assert ds.budget()["epsilon"] == pytest.approx(before - 0.2)
    view = tight_node["owner"].request("GET", f"/jobs/{job.job_id}")
    answers = json.loads({r["name"]: r for r in view["results"]}["answers.json"]["preview"])
    assert answers["replay_identical"] is True and answers["over_budget"] == "budget_exceeded"
    assert abs(answers["count"] - 20_000) < 500
    history = tight_node["analyst"].history()
    assert info.dp_releases[0].release_id in set(history["release_id"])
