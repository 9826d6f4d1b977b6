"""An approximation of the mybinder.org build and launch, in a fresh virtual environment.

What repo2docker would do, step by step: take the repository's tracked files (a clone), install
``binder/requirements.txt``, run ``binder/postBuild`` (which installs the repository as a wheel,
with its JupyterLab extension), then run ``binder/start <command>`` at launch. The command here
executes notebook 01 through papermill against the demo nodes that ``binder/start`` launched.

To stay within CI's time and offline, the fresh venv borrows the third-party packages of the
project's ``.venv`` through a ``.pth`` line (read-only: no ``.pth`` files of the parent run, so its
editable ``workbench`` is invisible), and pip builds without build isolation. The front end
already built by ``scripts/setup`` (``workbench/labextension``, gitignored) is copied into the
clone, so the wheel build packages it instead of running ``jlpm`` again; on Binder the same build
hook compiles it with the base image's Node 20.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import httpx
import nbformat
import pytest

REPO = Path(__file__).resolve().parents[2]


def three_free_ports() -> int:
    """A base port with base, base+1 and base+2 free on loopback."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base > 65000:
            continue
        try:
            for p in (base + 1, base + 2):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no three consecutive free ports")


def clone(dst: Path) -> None:
    """The tracked files, as a fresh clone has them, plus the already built front end (see module doc)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for raw in filter(None, files):
        src = REPO / raw.decode()
        if src.is_file():
            (dst / raw.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / raw.decode())
    built = REPO / "workbench" / "labextension"
    if (built / "static" / "style.js").exists():
        shutil.copytree(built, dst / "workbench" / "labextension")


def test_binder_files_are_what_repo2docker_expects():
    binder = REPO / "binder"
    assert (binder / "runtime.txt").read_text().strip() == "python-3.11"
    reqs = (binder / "requirements.txt").read_text()
    assert "torch==2.13.0+cpu" in reqs and "download.pytorch.org/whl/cpu" in reqs  # never the CUDA build
    assert not (binder / "environment.yml").exists()  # it would win over requirements.txt
    for script in ("postBuild", "start"):
        text = (binder / script).read_text()
        assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
        assert os.access(binder / script, os.X_OK)
    assert "pip install --no-cache-dir ." in (binder / "postBuild").read_text()
    start = (binder / "start").read_text()
    assert "workbench demo --no-lab" in start and start.rstrip().endswith('exec "$@"')
    readme = (REPO / "README.md").read_text()
    assert "mybinder.org/badge_logo.svg" in readme and "mybinder.org/v2/gh/" in readme


@pytest.mark.slow
def test_binder_build_and_launch_in_a_fresh_venv(tmp_path):
    repo, venv = tmp_path / "repo", tmp_path / "venv"
    clone(repo)
    subprocess.run([sys._base_executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (site / "_parent_layer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "PIP_"))}
    env.update({
        "PATH": f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home),
        "WORKBENCH_HOME": str(home / "workbench"), "WORKBENCH_CONFIG": str(home / "config" / "workbench.toml"),
        "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
        "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"), "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"), "IPYTHONDIR": str(home / "ipython"),
        "PIP_NO_BUILD_ISOLATION": "0", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "MPLBACKEND": "Agg",
    })
    home.mkdir()

    # Build: requirements.txt, then postBuild (from the repository root, as repo2docker runs it).
    for step in (["python", "-m", "pip", "install", "-r", "binder/requirements.txt"], ["binder/postBuild"]):
        done = subprocess.run(step, cwd=repo, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{step}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (venv / "bin" / "workbench").exists()
    assert (venv / "share/jupyter/labextensions/workbench-lab/package.json").exists()
    assert json.loads((venv / "share/jupyter/lab/settings/overrides.json").read_text())

    # Launch: binder/start starts the demo nodes, then execs the command (here: a notebook through papermill).
    port = three_free_ports()
    env.update({"WORKBENCH_DEMO_PORT": str(port), "WORKBENCH_DEMO_LOG": str(tmp_path / "demo.log")})
    # -I: not the checkout in the working directory; the kernel runs in notebooks/, as Jupyter starts it.
    command = ("python -I -c 'import sys, workbench; assert workbench.__file__.startswith(sys.prefix), workbench.__file__'"
               f" && python -m papermill --no-progress-bar --cwd notebooks notebooks/01_first_dp_query.ipynb"
               f" {tmp_path}/out.ipynb"
               # No node_url: on Binder wb.connect() is the first demo node (the one the panel shows).
               f" && python -c \"import workbench as wb; assert len(wb.connect('http://127.0.0.1:{port}').history()) >= 4\"")
    proc = subprocess.Popen(["binder/start", "bash", "-c", command], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=420)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the demo launcher (same group) stops its nodes on SIGTERM
        except ProcessLookupError:
            pass
    log = (tmp_path / "demo.log").read_text() if (tmp_path / "demo.log").exists() else ""
    assert proc.returncode == 0, f"{output[-4000:]}\n--- demo log ---\n{log[-2000:]}"
    assert f"demo nodes up on 127.0.0.1:{port}-{port + 2}" in output

    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "summary" in c.metadata.get("tags", [])]
    summary = ast.literal_eval(cell.outputs[-1]["data"]["text/plain"])
    assert summary["node"] == "hospital-a" and summary["rows_refused"] is True
    assert abs(summary["count_estimate"] - 20_000) < 200
    # Every participant's nodes are their own: state and tokens under this session's home.
    assert (home / "workbench" / "demo" / "state" / "hospital_a" / "node.sqlite").exists()
    assert "hospital-a" in (home / "config" / "workbench.toml").read_text()

    # The nodes go away with the session.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=1)
            time.sleep(0.5)
        except httpx.HTTPError:
            break
    else:
        pytest.fail("demo nodes still running after the session ended")
