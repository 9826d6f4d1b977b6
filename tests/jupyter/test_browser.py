"""The Workbench sidebar in a real JupyterLab, driven by a real Chromium.

A real node (``workbench node serve``), a real ``jupyter lab`` (own process
group, temp Jupyter dirs, killed after) and Debian's headless Chromium through
Python Playwright: open the panel, read the catalogue and a schema, run a
release from a notebook through the notebook UI, watch the gauge and the
history move, spend the grant to the end, pick a node whose token is wrong,
stop the node, and see a readable message each time. Screenshots go to
``$WORKBENCH_TEST_ARTIFACTS/jupyterlab`` (default ``test-artifacts/``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import write_client_config

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("WORKBENCH_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "jupyterlab"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notebook(cells: list[str]) -> dict:
    return {
        "cells": [
            {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": src}
            for i, src in enumerate(cells)
        ],
        "metadata": {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}},
        "nbformat": 4,
        "nbformat_minor": 5,
    }


class Lab:
    def __init__(self, url: str, token: str, process: subprocess.Popen, log: Path):
        self.url, self.token, self.process, self.log = url, token, process, log

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
            except ProcessLookupError:
                pass


AGREEMENT = {"id": "hospital-a/patients/2026-01", "purposes": [], "licence": "https://example.org/dsa/2026-01",
             "expires": "2099-12-31"}


@pytest.fixture
def running_node(tmp_path):
    """The demo node (a real ``workbench node serve``), its patients shared under a sharing agreement."""
    import tomllib

    import tomli_w

    from tests.conftest import RunningNode, make_config, provision, start_node

    config_path = make_config(tmp_path)
    raw = tomllib.loads(config_path.read_text())
    raw["datasets"]["patients"]["agreement"] = AGREEMENT
    config_path.write_text(tomli_w.dumps(raw))
    accounts = provision(config_path)
    node = RunningNode(f"http://127.0.0.1:{raw['node']['port']}", config_path, accounts.analyst_token,
                       accounts.owner_token, start_node(config_path))
    yield node
    node.stop()


@pytest.fixture
def lab(running_node, tmp_path):
    """``jupyter lab`` with the Workbench extensions, configured for ``running_node``."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium): apt-get install -y chromium")
    base = tmp_path / "lab"
    dirs = {name: base / name for name in ("config", "data", "runtime", "ipython", "workspaces", "notebooks",
                                                "app-settings", "user-settings", "home")}
    for d in dirs.values():
        d.mkdir(parents=True)
    # No "would you like news?" popup over the UI.
    (dirs["app-settings"] / "overrides.json").write_text(
        json.dumps({"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}})
    )
    # Serve the front end built from this tree (what `jupyter labextension develop` does).
    built = ROOT / "workbench" / "labextension"
    installed = Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "workbench-lab"
    if (built / "package.json").exists():
        (dirs["data"] / "labextensions").mkdir()
        (dirs["data"] / "labextensions" / "workbench-lab").symlink_to(built, target_is_directory=True)
    elif not (installed / "package.json").exists():
        pytest.fail("workbench-lab is not built: run `pip install -e .` (or `jlpm build` in extensions/workbench-lab)")

    client_config = write_client_config(
        base / "workbench-client.toml",
        {
            "hospital-a": {"url": running_node.url, "token": running_node.analyst_token},
            "old-token": {"url": running_node.url, "token": "wb-a-revoked-or-mistyped-token"},
        },
    )
    nb = dirs["notebooks"] / "release.ipynb"
    nb.write_text(json.dumps(_notebook([
        f'import workbench as wb\nnode = wb.connect("{running_node.url}")\nnode.info()["user"]',
        'patients = node.dataset("patients")\nfirst = patients.count().release(epsilon=0.5)\nfirst',
    ])))
    (dirs["notebooks"] / "exhaust.ipynb").write_text(json.dumps(_notebook([
        f'import workbench as wb\nnode = wb.connect("{running_node.url}")\nleft = float(node.grants().epsilon_left.iloc[0])\nleft',
        'last = node.dataset("patients").mean("age").release(epsilon=left)\nlast',
        'try:\n    node.dataset("patients").count().release(epsilon=0.1)\nexcept wb.WorkbenchError as error:\n    print(type(error).__name__, error.code)',
        'try:\n    node.dataset("patients").request_access("follow-up study", epsilon=5.0)\nexcept wb.NotSupported as error:\n    print(error.code)',
    ])))

    env = dict(os.environ)
    env.update(
        HOME=str(dirs["home"]),
        JUPYTER_CONFIG_DIR=str(dirs["config"]),
        JUPYTER_DATA_DIR=str(dirs["data"]),
        JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
        IPYTHONDIR=str(dirs["ipython"]),
        JUPYTERLAB_SETTINGS_DIR=str(dirs["user-settings"]),
        JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
        YARN_CACHE_FOLDER=str(base / "yarn-cache"),
        WORKBENCH_CONFIG=str(client_config),
        MPLBACKEND="Agg",
        # Our temp data dir (with this tree's build) before the venv's installed copy.
        JUPYTER_PREFER_ENV_PATH="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    env.pop("WORKBENCH_URL", None)
    env.pop("WORKBENCH_TOKEN", None)
    port, token = _free_port(), secrets.token_hex(16)
    log = base / "jupyter-lab.log"
    cmd = [
        sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip", "127.0.0.1",
        "--port", str(port), "--port-retries=0", f"--IdentityProvider.token={token}",
        f"--LabApp.workspaces_dir={dirs['workspaces']}", f"--LabApp.app_settings_dir={dirs['app-settings']}",
        f"--LabApp.user_settings_dir={dirs['user-settings']}", f"--ServerApp.root_dir={dirs['notebooks']}",
        "--ServerApp.jpserver_extensions={'workbench.jupyter': True}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", "--ServerApp.open_browser=False",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=dirs["notebooks"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    lab = Lab(f"http://127.0.0.1:{port}", token, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{lab.url}/api/status?token={token}", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer in 60 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield lab
    finally:
        lab.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        (ARTIFACTS / "jupyter-lab.log").write_text(log.read_text(errors="replace"))


@pytest.fixture
def page(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "lab" / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        page = context.pages[0] if context.pages else context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.errors = errors
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)  # assertions wait as long as actions: a loaded machine renders late
        try:
            yield page
        finally:
            context.close()


_T0 = [time.monotonic()]


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    print(f"[{time.monotonic() - _T0[0]:6.1f}s] screenshot {name}")


def widen_sidebar(page, width: int) -> None:
    """Drag the left sidebar's edge, as a person would, so the panel reads comfortably."""
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    if box is None:
        return
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(width, y, steps=8)
    page.mouse.up()


def open_panel(page, lab, width: int):
    """Open JupyterLab fresh, click the Workbench tab in the left sidebar and widen the sidebar: the panel."""
    page.goto(f"{lab.url}/lab?reset&token={lab.token}")
    page.wait_for_selector("#jp-main-dock-panel")
    page.locator('.lm-TabBar-tab[data-id="workbench-lab-panel"]').click()
    page.wait_for_selector(".jp-WorkbenchPanel")
    widen_sidebar(page, width)
    return page.locator(".jp-WorkbenchPanel")


def panel_text(page, selector: str) -> str:
    return page.locator(f".jp-WorkbenchPanel {selector}").first.inner_text()


def run_all_cells(page) -> None:
    """Run every cell of the open notebook through the menu, as a person would."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click()
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()


def wait_kernel_ready(page, timeout=90_000) -> None:
    page.wait_for_selector(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout
    )


def wait_idle_kernel(page, timeout=90_000) -> None:
    page.wait_for_function(
        """() => {
            const cells = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell')];
            return cells.length > 0 && cells.every(c => {
                const p = c.querySelector('.jp-InputPrompt');
                return p && /\\[\\d+\\]/.test(p.textContent);
            });
        }""",
        timeout=timeout,
    )


def test_panel_follows_releases_and_errors(lab, page, running_node):
    from playwright.sync_api import expect

    _T0[0] = time.monotonic()
    panel = open_panel(page, lab, 400)
    expect(panel).to_be_visible()

    # Nodes: the real node up, with its version and who I am there.
    node = panel.locator('.jp-WorkbenchPanel-node[data-node="hospital-a"]')
    expect(node).to_have_attribute("data-status", "up")
    expect(node).to_contain_text("analyst")

    # Catalogue, then a dataset's schema table.
    expect(panel.locator('.jp-WorkbenchPanel-dataset[data-dataset="iris"]')).to_contain_text("CC-BY-4.0")
    patients = panel.locator('.jp-WorkbenchPanel-dataset[data-dataset="patients"]')
    expect(patients).to_contain_text("private")
    patients.click()
    schema = panel.locator('.jp-WorkbenchPanel-schema[data-dataset="patients"]')
    expect(schema.locator("table")).to_contain_text("patient_id")
    expect(schema.locator("table")).to_contain_text("diagnosis")
    expect(schema).to_contain_text("Privacy unit: one patient_id")
    agreement = schema.locator(".jp-WorkbenchPanel-agreement")  # the sharing agreement, clause by clause
    expect(agreement).to_contain_text(f"Sharing agreement {AGREEMENT['id']}")
    expect(agreement).to_contain_text(f"Licence: {AGREEMENT['licence']}")
    expect(agreement).to_contain_text("Ends: 2099-12-31")
    expect(agreement).to_contain_text("Purposes: any")

    # The grant's gauge before anything is spent; no release yet.
    gauge = panel.locator('.jp-WorkbenchPanel-gauge[data-dataset="patients"]')
    expect(gauge.locator(".jp-WorkbenchPanel-spent")).to_have_text("ε 0 spent")
    expect(gauge.locator(".jp-WorkbenchPanel-left")).to_have_text("10 left of 10")
    expect(panel.locator('[data-section="history"]')).to_contain_text("No release yet.")
    requests = panel.locator('[data-section="requests"]')
    expect(requests).to_contain_text(re.compile("not supported by this node|no access request"))
    supports_requests = "no access request" in requests.inner_text()
    shot(page, "01-catalogue-and-schema")
    patients.click()  # fold the schema away again
    expect(schema).to_have_count(0)

    # A release from a notebook, run through the notebook UI; the panel
    # (still open in the sidebar) follows without a page reload.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open', {path: 'release.ipynb'})")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook .jp-CodeCell")
    wait_kernel_ready(page)
    run_all_cells(page)
    wait_idle_kernel(page)
    outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    expect(outputs.nth(0)).to_contain_text("analyst")
    expect(outputs.nth(1)).to_contain_text("estimate")
    expect(gauge.locator(".jp-WorkbenchPanel-spent")).to_have_text("ε 0.5 spent", timeout=20_000)
    expect(gauge.locator(".jp-WorkbenchPanel-left")).to_have_text("9.5 left of 10")
    history = panel.locator(".jp-WorkbenchPanel-release")
    expect(history).to_have_count(1)
    expect(history.first).to_contain_text("count")
    shot(page, "02-after-release")

    # Spend the rest of the grant: the gauge says so, the notebook gets BudgetExceeded.
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:open', {path: 'exhaust.ipynb'})")
    page.wait_for_function("() => document.querySelectorAll('.jp-NotebookPanel').length >= 2")
    wait_kernel_ready(page)
    run_all_cells(page)
    wait_idle_kernel(page)
    visible = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    expect(visible.nth(2)).to_contain_text("BudgetExceeded")
    expect(gauge.locator(".jp-WorkbenchPanel-left")).to_have_text("budget exhausted", timeout=20_000)
    expect(gauge).to_have_class(re.compile(r"\bjp-mod-exhausted\b"))
    expect(history).to_have_count(2)
    if supports_requests:  # asked for more budget in the last cell: a pending request
        expect(requests.locator("tbody tr")).to_have_count(1, timeout=20_000)
        expect(requests).to_contain_text("pending")
    shot(page, "03-budget-exhausted")

    # The same panel in the dark theme (JupyterLab CSS variables only).
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(500)
    shot(page, "04-dark-theme")
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Light'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'true'")

    # A node whose token is wrong: a readable message, not a blank panel.
    old_token = panel.locator('.jp-WorkbenchPanel-node[data-node="old-token"]')
    expect(old_token).to_have_attribute("data-status", "error")
    expect(old_token).to_contain_text("not authenticated")
    old_token.click()
    banner = panel.locator(".jp-WorkbenchPanel-banner .jp-WorkbenchPanel-error")
    expect(banner).to_have_attribute("data-code", "not_authenticated")
    expect(banner).to_contain_text("Not authenticated")
    shot(page, "05-not-authenticated")
    panel.locator('.jp-WorkbenchPanel-node[data-node="hospital-a"]').click()
    expect(banner).to_have_count(0)
    expect(gauge.locator(".jp-WorkbenchPanel-left")).to_have_text("budget exhausted")

    # Stop the node: the panel says it is unreachable and keeps the last state.
    running_node.stop()
    expect(banner).to_have_attribute("data-code", "node_unreachable", timeout=20_000)
    expect(banner).to_contain_text("Node unreachable")
    expect(node).to_have_attribute("data-status", "down")
    expect(history).to_have_count(2)
    # The refresh button works and keeps the message.
    panel.locator(".jp-WorkbenchPanel-refresh").click()
    expect(banner).to_contain_text("Node unreachable")
    shot(page, "06-node-down")
    page.evaluate("() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})")
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_timeout(500)
    shot(page, "07-node-down-dark")

    assert not page.errors, page.errors
