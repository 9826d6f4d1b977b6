"""``job.run_on_mock()``: the same code on the public DP mock, on the analyst's machine; failures are free."""

from __future__ import annotations

from .honest_analysis import write_notebook


def test_failing_mock_runs_report_why_and_cost_nothing(jobs_node, tmp_path):
    ds = jobs_node["analyst"].dataset("patients")
    before = ds.budget()
    script = tmp_path / "broken.py"
    script.write_text("import workbench_job\ndf = workbench_job.load(data_path)\nraise ValueError(len(df))\n")
    run = ds.code_job(script, outputs=["out.csv"]).run_on_mock()
    assert not run.ok and run.error == "the script exited with status 1" and run.outputs == {}
    assert "ValueError: 300" in run.log.read_text()  # the analyst's own log, on the mock's 300 rows

    notebook = write_notebook(tmp_path / "broken.ipynb", "df = workbench_job.load(data_path)\ndf['nope']",
                              parameters="import workbench_job\ndata_path = ''\noutput_dir = ''")
    run = ds.code_job(notebook, outputs=["out.csv"]).run_on_mock()
    assert not run.ok and run.error.startswith("KeyError"), run.error

    forever = tmp_path / "forever.py"
    forever.write_text("import time\ntime.sleep(600)\n")
    run = ds.code_job(forever, outputs=["out.csv"]).run_on_mock(timeout_s=3)
    assert not run.ok and run.error == "stopped: the script ran longer than 3 s"

    assert ds.budget() == before  # nothing was spent
    assert jobs_node["analyst"].request("GET", "/jobs") == []  # nothing was sent
