"""The scheduled analysis (notebooks/scheduled_report.ipynb) run as cron would run it, against two real nodes.

One month after another: the first run is charged; re-running it spends nothing (replays, same
answers); a new month's data file on one node is a new dataset version and is charged there only;
when a grant cannot pay for a run, the run stops before spending anything, with a clear message
and a non-zero exit status of ``papermill`` (and of ``workbench schedule``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.e2e.test_notebooks import NOTEBOOKS, jupyter_dirs, launch_many  # noqa: F401 - jupyter_dirs is a fixture

NOTEBOOK = NOTEBOOKS / "scheduled_report.ipynb"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, jupyter_dirs):  # noqa: F811
    nodes = launch_many(tmp_path_factory.mktemp("sched"), ["hospital_b", "hospital_c"])
    yield nodes
    for node in nodes:
        node.stop()


def papermill(out: Path, urls: list[str], epsilon: float) -> subprocess.CompletedProcess:
    """The cron line of docs/teaching.md, minus cron."""
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([str(BIN / "papermill"), "--no-progress-bar", str(NOTEBOOK), str(out / "run.ipynb"),
                           "-p", "node_urls", ",".join(urls), "-p", "epsilon", str(epsilon),
                           "-p", "output_path", str(out)], capture_output=True, text=True, timeout=600)


def schedule(out: Path, urls: list[str], epsilon: float) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "workbench"), "schedule", str(NOTEBOOK), "--output", str(out),
                           "-p", "node_urls", ",".join(urls), "-p", "epsilon", str(epsilon)],
                          capture_output=True, text=True, timeout=600)


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def new_month(node, seed: int) -> None:
    """The owner replaces the data file with next month's extract (same schema, new rows)."""
    from workbench.demo.data import patients

    path = Path(tomllib.loads(node.config_path.read_text())["datasets"]["patients"]["path"])
    tmp = path.with_suffix(".next")
    patients(15_000, seed, id_prefix="B").write_parquet(tmp)
    tmp.replace(path)


def budgets(nodes) -> list[float]:
    import workbench as wb

    return [round(wb.connect(n.url, token=n.analyst_token).dataset("patients").budget()["epsilon"], 9) for n in nodes]


@pytest.mark.slow
def test_schedule_rerun_semantics(two_nodes, tmp_path):
    b, c = two_nodes
    urls = [b.url, c.url]

    # Month 1: four questions at eps 1 each, on both nodes (grant: eps 10 per node).
    run1 = papermill(tmp_path / "m1", urls, epsilon=4)
    assert run1.returncode == 0, run1.stderr[-3000:]
    s1 = summary(tmp_path / "m1")
    assert s1["status"] == "ok" and s1["nodes"] == ["hospital-b", "hospital-c"]
    assert (s1["releases"], s1["replayed"], s1["epsilon_charged"]) == (8, 0, 8.0)
    assert {"report.md", "figures/costs_and_ages.png", "figures/readmissions.png",
            "tables/patients.csv", "tables/mean_cost_by_diagnosis.csv"} <= set(s1["files"])
    report = (tmp_path / "m1" / "report.md").read_text()
    assert report.startswith("# Patients report") and "| node | diagnosis | estimate | lower | upper |" in report
    assert (tmp_path / "m1" / "figures" / "readmissions.png").read_bytes()[:4] == b"\x89PNG"
    assert budgets(two_nodes) == [6.0, 6.0]

    # The same run again (cron fired twice, or someone re-ran it): nothing spent, same answers.
    run2 = schedule(tmp_path / "m1-again", urls, epsilon=4)
    assert run2.returncode == 0, run2.stderr[-3000:]
    s2 = summary(tmp_path / "m1-again")
    assert (s2["replayed"], s2["epsilon_charged"]) == (8, 0.0)
    for table in ("patients", "mean_cost_by_diagnosis", "readmissions", "age_histogram"):
        assert (tmp_path / "m1" / "tables" / f"{table}.csv").read_text() == \
            (tmp_path / "m1-again" / "tables" / f"{table}.csv").read_text()
    assert budgets(two_nodes) == [6.0, 6.0]

    # Month 2 on node B only: a new dataset version there is charged; node C's answers are replays.
    new_month(b, seed=202)
    run3 = papermill(tmp_path / "m2", urls, epsilon=4)
    assert run3.returncode == 0, run3.stderr[-3000:]
    s3 = summary(tmp_path / "m2")
    assert s3["versions"]["hospital-b"] != s1["versions"]["hospital-b"]
    assert s3["versions"]["hospital-c"] == s1["versions"]["hospital-c"]
    assert (s3["replayed"], s3["epsilon_charged"]) == (4, 4.0)
    assert budgets(two_nodes) == [2.0, 6.0]

    # Month 3 on node B: eps 4 needed, 2 left. Nothing is spent anywhere; a clear message; exit != 0.
    new_month(b, seed=303)
    run4 = papermill(tmp_path / "m3", urls, epsilon=4)
    assert run4.returncode != 0
    said = run4.stdout + run4.stderr
    assert "BudgetExceeded" in said and "Scheduled report stopped before spending anything" in said
    assert "node hospital-b needs ε=4" in said and "ε=2 left" in said
    s4 = summary(tmp_path / "m3")
    assert s4["status"] == "refused" and "hospital-b" in s4["message"] and "hospital-c" not in s4["message"]
    assert budgets(two_nodes) == [2.0, 6.0]

    run5 = schedule(tmp_path / "m3-retry", urls, epsilon=4)
    assert run5.returncode == 1
    assert "BudgetExceeded" in run5.stderr and "Scheduled report stopped before spending anything" in run5.stderr


def test_schedule_prints_a_cron_line(tmp_path):
    done = subprocess.run([str(BIN / "workbench"), "schedule", str(NOTEBOOK), "--output", "reports/%Y-%m",
                           "-p", "epsilon", "1", "--cron", "0 6 1 * *"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip()
    assert line.startswith("0 6 1 * * ")
    assert r"reports/\%Y-\%m" in line and "schedule" in line and "-p epsilon 1" in line
    assert "%Y" not in line.replace(r"\%Y", "")  # every % escaped for crontab
    # reports/ does not exist yet: the line creates it before appending its log there.
    folder = str(Path("reports").resolve())
    assert f"mkdir -p {folder} && " in line and line.index("mkdir -p") < line.index(f">> {folder}/schedule.log")


def test_report_bars_keep_numeric_bin_order():
    """The report's grouped bars (its figure cell, run as written) keep the bins in the node's numeric order:
    ``pivot`` alone sorts labels as text and drew ``[5, 10)`` after ``[45, 50)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat
    import pandas as pd

    cell = next(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if "def grouped_bars" in c.source)
    scope: dict = {}
    exec(cell.split("\n\nfig, axes")[0], scope)  # only the function: the rest draws the report's own tables
    bins = [f"[{lo}, {lo + 5})" for lo in range(0, 50, 5)]
    table = pd.DataFrame([{"node": node, "bin": b, "estimate": 10.0 + i, "lower": 8.0 + i, "upper": 12.0 + i}
                          for node in ("hospital-b", "hospital-c") for i, b in enumerate(bins)])
    fig, ax = plt.subplots()
    scope["grouped_bars"](table, "bin", ax, "ages")
    assert [t.get_text() for t in ax.get_xticklabels()] == bins
    assert [round(p.get_height(), 6) for p in ax.patches[:len(bins)]] == [10.0 + i for i in range(len(bins))]
    plt.close(fig)
