"""The panel's owner view in a real JupyterLab and Chromium: approve an access request and a review item (SDV on
real rows), read and approve a code job, then release its output; the analyst then collects what was approved.
(Real node, real bubblewrap.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import tomllib

import pytest
import tomli_w

import workbench as wb
from tests.conftest import RunningNode, make_config, provision, start_node
from workbench.demo.nodes import DEMO_PURPOSE
from workbench.errors import NotAuthorized

from .test_browser import lab, open_panel, page, shot  # noqa: F401 - the fixtures, with our running_node

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(1200),
              pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")]

SUMMARY_JOB = """import os, workbench_job
df = workbench_job.load(data_path)
df.groupby("sex").size().rename("n").reset_index().to_csv(os.path.join(output_dir, "summary.csv"), index=False)
"""
INTRO = "# Patients by sex\nOne table: the number of patients of each sex."


def summary_notebook(path):
    """The job as an analyst writes it: a notebook with a markdown cell, a parameters cell and the code."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(INTRO),
                nbformat.v4.new_code_cell('data_path = "data.parquet"\noutput_dir = "."',
                                          metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(SUMMARY_JOB)]
    nbformat.write(nb, path)
    return path


def launch_allowing_sdv(root):
    """A real node whose owner allows SDV on the real rows of ``patients`` (results held for review)."""
    config = make_config(root)
    raw = tomllib.loads(config.read_text())
    raw["datasets"]["patients"]["allow_sdv_on_real"] = True
    config.write_text(tomli_w.dumps(raw))
    accounts = provision(config)
    process = start_node(config)
    return RunningNode(f"http://127.0.0.1:{raw['node']['port']}", config, accounts.analyst_token,
                       accounts.owner_token, process)


@pytest.fixture
def running_node(tmp_path):
    """A real node whose JupyterLab connection is an owner's (olga); the analyst's token kept aside, with a
    pending access request, a pending review item and a pending code job."""
    node = launch_allowing_sdv(tmp_path / "node")
    added = subprocess.run([sys.executable, "-m", "workbench.cli", "node", "user", "add", "olga", "--role", "owner",
                            "--config", str(node.config_path)], capture_output=True, text=True, timeout=120)
    assert added.returncode == 0, added.stderr
    analyst = wb.connect(node.url, token=node.analyst_token)
    ds = analyst.dataset("patients", purpose=DEMO_PURPOSE)  # the request approved below adds a second grant
    node.request = ds.request_access("follow-up study", epsilon=1.0)
    notebook = summary_notebook(tmp_path / "by_sex.ipynb")
    node.job = ds.code_job(notebook, outputs=["summary.csv"]).submit(purpose="sex ratio")
    node.sdv = ds.synthesize_sdv("GaussianCopula", rows=100, progress=False)  # a review item of another channel
    node.analyst = analyst
    node.analyst_token = added.stdout.strip().splitlines()[-1].strip()  # the panel's connection: olga
    yield node
    analyst.close()
    node.stop()


def wait_for(check, timeout_s: float = 120.0):
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)
    return value


def test_owner_approves_a_request_and_a_code_job_and_releases_its_output(lab, page, running_node):  # noqa: F811
    from playwright.sync_api import expect

    job_id, request_id = running_node.job.job_id, running_node.request["request_id"]
    panel = open_panel(page, lab, 520)

    review = panel.locator(f'[data-section="decisions"] [data-review="{running_node.sdv.review_id}"]')
    expect(review).to_contain_text("sdv_real", timeout=90_000)
    shot(page, "owner-decisions")
    with pytest.raises(NotAuthorized):
        running_node.sdv.collect()  # held until an owner approves it
    review.locator("button", has_text="Approve").click()
    expect(review).to_have_count(0, timeout=60_000)
    assert len(running_node.sdv.collect().data) == 100  # the panel's approval reached the node

    request = panel.locator(f'[data-section="decisions"] [data-request="{request_id}"]')
    expect(request).to_contain_text("follow-up study")
    request.locator("button", has_text="Approve").click()
    wait_for(lambda: running_node.analyst.requests().set_index("request_id").loc[request_id, "status"] == "approved")
    expect(request).to_have_count(0, timeout=60_000)

    jobs = panel.locator('[data-section="jobs"]')
    row = jobs.locator(f'[data-job="{job_id}"]')
    expect(row).to_have_attribute("data-status", "pending", timeout=60_000)
    row.click()
    detail = jobs.locator(f'[data-job-detail="{job_id}"]')
    code = detail.locator("[data-code]")  # the notebook rendered cell by cell, not its JSON
    expect(code.locator('[data-cell="2"]')).to_contain_text('groupby("sex")')
    expect(code.locator('[data-cell="0"][data-cell-type="markdown"]')).to_contain_text("Patients by sex")
    expect(code.locator('[data-cell="1"]')).to_contain_text("parameters")
    assert '"cell_type"' not in code.inner_text()
    shot(page, "owner-job-code")
    detail.locator('[data-action="approve"]').click()
    expect(row).to_have_attribute("data-status", "held", timeout=300_000)
    output = detail.locator('[data-output="summary.csv"]')
    expect(output).to_contain_text("cell sizes", timeout=60_000)
    log = detail.locator('[data-output="executed.ipynb"]')  # the held log, readable: cells and printed output
    expect(log).to_contain_text('groupby("sex")')
    assert '"cell_type"' not in log.inner_text()
    shot(page, "owner-job-checks")
    assert running_node.job.outputs() == {}  # held until the owner's release
    output.locator('[data-action="release"]').click()
    files = wait_for(lambda: running_node.job.outputs())
    assert set(files) == {"summary.csv"}
    assert set(files["summary.csv"].frame()["sex"]) == {"F", "M"}
    shot(page, "owner-job-released")
    assert not page.errors, page.errors
