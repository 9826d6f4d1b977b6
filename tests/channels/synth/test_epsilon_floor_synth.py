"""Issue 16, finding 3(b): the same epsilon floor and cap for every channel, through one policy.

The policy itself (``workbench/node/policy.py``) is built by issue 13; these tests pin what it must do for
synthetic data, where the red team found a 500 and free worker time: a synthesis preview at epsilon 5e-324
(``ZeroDivisionError``) and jobs at 1e-300 / 1e-9 that ran 10-14 s of worker time at no cost.
"""

from __future__ import annotations

import pytest

SPEC = {"method": "independent", "rows": 10, "columns": ["sex", "region"]}


def _spent(client) -> float:
    return client.get("/v1/datasets/patients/budget", headers=client.analyst).json()["epsilon_spent"]


@pytest.mark.parametrize("epsilon", [5e-324, 1e-300, 1e-9])
def test_synthesis_preview_below_the_floor_is_refused_not_a_500(app_client, epsilon):
    r = app_client.post("/v1/datasets/patients/synth/preview", json={"spec": SPEC, "epsilon": epsilon},
                        headers=app_client.analyst)
    assert r.status_code == 422 and r.json()["code"] == "bad_epsilon", r.text


@pytest.mark.parametrize("epsilon", [1e-300, 1e-9])
def test_synthesis_job_below_the_floor_is_refused_before_any_work(app_client, epsilon):
    before = _spent(app_client)
    r = app_client.post("/v1/datasets/patients/synth/jobs", json={"spec": SPEC, "epsilon": epsilon},
                        headers=app_client.analyst)
    if r.status_code == 202:  # not refused: cancel the job so no fit runs on after the test
        app_client.delete(f"/v1/synth/jobs/{r.json()['job_id']}", headers=app_client.analyst)
    assert r.status_code == 422 and r.json()["code"] == "bad_epsilon", r.text
    assert _spent(app_client) == before
