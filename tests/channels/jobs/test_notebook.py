"""notebooks/08_code_jobs.ipynb, executed top to bottom by papermill (its own node, real sandbox)."""

from __future__ import annotations

import pytest

from tests.e2e.test_notebooks import errors_in, figures_with_captions, jupyter_dirs, run_notebook, summary_of  # noqa: F401

from .conftest import needs_bwrap

pytestmark = [needs_bwrap, pytest.mark.slow, pytest.mark.timeout(1800)]


def test_08_code_jobs(jupyter_dirs, tmp_path):  # noqa: F811
    nb = run_notebook("08_code_jobs.ipynb", tmp_path, min_age=40)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["mock_ok"] is True and s["first_status"] == "released"
    assert s["released"] == ["km_curve.png", "summary.csv"] and s["groups_at_least_10"] is True
    assert s["rerun_approved_with"] is True and s["rerun_new_version"] is True
    assert s["approvals"] == 1 and s["collections"] == 3
    captions = figures_with_captions(nb)
    assert len(captions) == 1 and "Kaplan-Meier" in captions[0]
