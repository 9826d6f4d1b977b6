"""The teaching notebooks, executed top to bottom by papermill against real demo nodes and the embedded node.

Each notebook ends with a cell tagged ``summary`` whose value (a dict of plain Python values) is what a
reader would check; the tests read it back from the executed notebook, and check the figures and
their captions, not just that the notebook ran.
"""

from __future__ import annotations

import ast
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from tests.conftest import launch

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"

#: Every notebook in notebooks/ and the test that executes it (a new notebook must be added here).
EXECUTED_BY = {
    "01_first_dp_query.ipynb": "test_01_first_query_on_a_demo_node",
    "02_budgets_and_replay.ipynb": "test_02_budgets_and_replay_on_the_embedded_node",
    "06_the_owners_side.ipynb": "test_06_owner_side_on_a_running_node, test_06_owner_side_with_its_own_node",
    "03_synthetic_data.ipynb": "tests/e2e/test_notebooks_channels.py::test_03_synthetic_data",
    "04_federated_queries_and_he.ipynb": "tests/e2e/test_notebooks_channels.py::test_04_federated_queries_and_he",
    "05_federated_learning.ipynb": "tests/e2e/test_notebooks_channels.py::test_05_federated_learning",
    "scheduled_report.ipynb": "tests/e2e/test_notebooks_schedule.py",
    "08_code_jobs.ipynb": "tests/channels/jobs/test_notebook.py",
    "07_query_language.ipynb": "tests/e2e/test_query_notebook.py::test_07_query_language",
}


# ---------------------------------------------------------------- helpers (imported by the other notebook tests)


@pytest.fixture(scope="module")
def jupyter_dirs(tmp_path_factory):
    """Jupyter/IPython state in temp folders; the kernel is the venv's own python3 (ipykernel)."""
    root = tmp_path_factory.mktemp("jupyter")
    keys = ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR")
    old = {k: os.environ.get(k) for k in keys}
    for k in keys:
        os.environ[k] = str(root / k.lower())
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def run_notebook(name: str, out_dir: Path, **parameters) -> nbformat.NotebookNode:
    """Execute notebooks/<name> with papermill (python3 kernel = this venv) and return the executed notebook."""
    import papermill

    out = out_dir / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(out_dir), progress_bar=False, log_output=False)
    return nbformat.read(out, as_version=4)


def tagged(nb: nbformat.NotebookNode, tag: str) -> list:
    return [c for c in nb.cells if tag in c.get("metadata", {}).get("tags", [])]


def summary_of(nb: nbformat.NotebookNode) -> dict:
    """The value of the cell tagged ``summary`` (a dict literal in its text/plain output)."""
    (cell,) = tagged(nb, "summary")
    results = [o for o in cell.outputs if o.output_type == "execute_result"]
    assert results, f"summary cell has no result: {cell.outputs}"
    return ast.literal_eval(results[-1]["data"]["text/plain"])


def figures_with_captions(nb: nbformat.NotebookNode) -> list[str]:
    """Captions of every figure; fails if a figure is not followed by a markdown caption ('*Figure N. ...*')."""
    captions = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        if not images:
            continue
        nxt = nb.cells[i + 1] if i + 1 < len(nb.cells) else None
        assert nxt is not None and nxt.cell_type == "markdown" and nxt.source.startswith("*Figure"), \
            f"figure in cell {i} has no caption right after it"
        captions.append(nxt.source)
    return captions


def errors_in(nb: nbformat.NotebookNode) -> list[str]:
    return [f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]


def save_tokens(nodes) -> None:
    """Store each node's analyst token in the (test-isolated) client config, as ``workbench demo`` does."""
    from workbench.config import save_connection

    for i, node in enumerate(nodes):
        save_connection(f"test-node-{node.url.rsplit(':', 1)[1]}-{i}", node.url, node.analyst_token)


def launch_many(root: Path, hospitals: list[str]):
    """Start demo hospital nodes in parallel (each in its own folder, own port, own state)."""
    with ThreadPoolExecutor(len(hospitals)) as pool:
        nodes = list(pool.map(lambda h: launch(root / h, h), hospitals))
    save_tokens(nodes)
    return nodes


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def demo_nodes(tmp_path_factory, jupyter_dirs):
    nodes = launch_many(tmp_path_factory.mktemp("demo"), ["hospital_a", "hospital_c"])
    yield dict(zip(["a", "c"], nodes))
    for node in nodes:
        node.stop()


# ---------------------------------------------------------------- static checks (cheap)


def test_every_notebook_is_executed_by_a_test():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(EXECUTED_BY)


@pytest.mark.parametrize("name", sorted(EXECUTED_BY))
def test_notebook_shape(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    (params,) = tagged(nb, "parameters")
    assert "= None" in params.source, "node addresses default to None (the embedded node / own node)"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
    code = [c for c in nb.cells if c.cell_type == "code"]
    prose = [c for c in nb.cells if c.cell_type == "markdown"]
    assert len(prose) >= len(code) / 2, "more prose, fewer walls of code"
    longest = max(len(c.source.splitlines()) for c in code)
    assert longest <= 30, f"a code cell of {longest} lines is a wall of code"


# ---------------------------------------------------------------- executed


def test_01_first_query_on_a_demo_node(demo_nodes, tmp_path):
    nb = run_notebook("01_first_dp_query.ipynb", tmp_path, node_url=demo_nodes["a"].url)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["node"] == "hospital-a"
    assert s["rows_refused"] is True and s["iris_licence"] == "CC-BY-4.0"
    lo, hi = s["count_interval"]
    assert lo < s["count_estimate"] < hi and hi - lo < 100
    assert abs(s["count_estimate"] - 20_000) < 200  # hospital A has 20,000 patients; noise at eps 0.1 is ~±30
    # error falls as 1/epsilon: 500x the epsilon, a few hundred times less error
    assert 200 < s["error_ratio_eps_0.01_vs_5"] < 600
    assert 20 < s["table_error_eps_0.01"] / s["table_error_eps_0.5"] < 80
    assert s["diagnoses"] == ["asthma", "diabetes", "healthy", "heart_disease", "hypertension"]
    assert s["epsilon_left"] == pytest.approx(10 - 0.81)
    # The histogram's bins come in numeric order over the public bounds; clamping leaves nothing below 0.
    assert s["cost_bin_edges"] == [5000.0 * i for i in range(11)]
    assert s["cost_clamped_min"] >= 0.0
    captions = figures_with_captions(nb)
    assert len(captions) == 3 and "previews" in captions[0] and "treatment cost" in captions[2]


def test_02_budgets_and_replay_on_the_embedded_node(jupyter_dirs, tmp_path, monkeypatch):
    """node_url=None: wb.connect(), the in-process demo node. Run twice: the second run spends nothing."""
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))  # the kernel's embedded node: fresh state
    nb = run_notebook("02_budgets_and_replay.ipynb", tmp_path)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert (s["first_charged"], s["first_replayed"]) == (1.0, False)
    assert (s["again_charged"], s["again_replayed"]) == (0.0, True)
    assert s["cheaper_charged"] == 0.5
    assert s["exceeded_code"] == "budget_exceeded" and s["left_unchanged_by_refusal"] is True
    assert s["epsilon_spent_here"] == pytest.approx(1.5)
    assert len(figures_with_captions(nb)) == 2
    # The refusal is shown to the reader with its code and the numbers.
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "BudgetExceeded (budget_exceeded): This release costs" in text
    assert "request_access" in text  # the refusal says what to do about it
    # An expected refusal is an answer, not a crash: no internal log line, no traceback in the notebook.
    streams = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("name") == "stderr")
    assert "group-committed" not in streams and "Traceback" not in streams, streams

    again = summary_of(run_notebook("02_budgets_and_replay.ipynb", tmp_path))
    assert again["epsilon_spent_here"] == 0.0 and again["first_replayed"] is True
    assert again["epsilon_left"] == pytest.approx(s["epsilon_left"])


def test_06_owner_side_on_a_running_node(demo_nodes, tmp_path):
    node = demo_nodes["c"]
    nb = run_notebook("06_the_owners_side.ipynb", tmp_path, node_config=str(node.config_path), node_url=node.url)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["analyst_released"] == ["False", "True"]
    assert s["grant_listed"] is True and s["audit_ok"] is True
    assert {"user_add", "grant_add", "login", "release"} <= set(s["audit_actions"])
    assert s["revoked_code"] == "grant_expired"
    assert s["tampered_exit"] == 1 and "TAMPERED" in s["tampered_message"]
    assert len(figures_with_captions(nb)) == 1
    # The tampering happened on a copy: the node's own log is intact, and the notebook printed no token.
    import subprocess
    import sys

    verify = subprocess.run([sys.executable, "-m", "workbench.cli", "node", "audit", "verify", "--config",
                             str(node.config_path)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    printed = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells for o in c.get("outputs", []))
    assert node.analyst_token not in printed and "eyJ" not in printed


@pytest.mark.slow
def test_06_owner_side_with_its_own_node(jupyter_dirs, tmp_path, monkeypatch):
    """With no parameters the notebook sets up, serves and stops a node of its own."""
    nb = run_notebook("06_the_owners_side.ipynb", tmp_path)
    assert not errors_in(nb)
    s = summary_of(nb)
    assert s["audit_ok"] is True and s["revoked_code"] == "grant_expired" and s["tampered_exit"] == 1
    assert s["audit_actions"] == ["grant_add", "login", "release", "reserve", "user_add"]
