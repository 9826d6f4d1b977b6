"""Notebook 07 (the query language), executed by papermill on the embedded node: filters, agg, corr, a
regression, SQL and accuracy-first, checked through the values a reader would look at."""

from __future__ import annotations

import pytest

from tests.e2e.test_notebooks import errors_in, figures_with_captions, jupyter_dirs, run_notebook, summary_of  # noqa: F401


def test_07_query_language(jupyter_dirs, tmp_path, monkeypatch):  # noqa: F811 - the fixture
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))  # the kernel's embedded node: fresh state
    nb = run_notebook("07_query_language.ipynb", tmp_path)
    assert not errors_in(nb), errors_in(nb)
    s = summary_of(nb)
    lo, hi = s["old_women_interval"]
    assert 0 < lo < hi and hi - lo < 200
    assert s["refusal_code"] == "bad_bounds"
    assert s["bands"] == ["(-inf, 18]", "(18, 40]", "(40, 65]", "(65, inf]"]
    assert s["statistics"] == ["cost", "n", "p90", "sd"]
    assert 0.2 < s["corr_age_cost"] < 0.7  # age drives cost in the demo data
    assert s["age_coefficient"] > 0 and s["age_se"] > 0
    assert s["sql_replayed_by_agg"] is True
    assert 0 < s["epsilon_for_50"] < 1
    assert s["fit_replayed"] is True  # the regression reuses the correlation's noisy sums: free
    assert s["epsilon_spent"] == pytest.approx(0.2 + 0.2 + 0.3 + 0.6 + 1.0 + 0.4)
    (caption,) = figures_with_captions(nb)
    assert "95% intervals" in caption
