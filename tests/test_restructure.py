"""scripts/restructure.py on a small tree in the old layout: moves, rewrites, idempotence, determinism."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "restructure.py"

OLD_TREE = {
    "workbench/__init__.py": "from .he import client as _he_kernel, evaluate as _he_evaluate  # noqa: F401\n",
    "workbench/errors.py": "",
    "workbench/node/__init__.py": "",
    "workbench/node/tasks.py": 'TASKS = {"dp.query": "workbench.dp.engine:run", "fl.local_round": "workbench.fl.local:local_round"}\n',
    "workbench/node/app.py": "def create():\n    from ..dp import node_routes as dp_routes\n    from . import tasks\n"
                             "    return dp_routes, tasks\n",
    "workbench/dp/__init__.py": '"""DP: :mod:`.engine` runs in the worker."""\n',
    "workbench/dp/engine.py": "from ..errors import InvalidQuery\nfrom .columnar import scan\n\n\ndef run(task):\n"
                              "    return scan, InvalidQuery\n",
    "workbench/dp/columnar.py": "def scan():\n    pass\n",
    "workbench/dp/node_routes.py": "from . import engine\nfrom .engine import run\n",
    "workbench/dp/newly_added.py": "from .engine import run  # a module another developer added\n",
    "workbench/federated_dp.py": "from .dp.engine import run\n",
    "workbench/he/__init__.py": '"""HE.\n\n* :mod:`.client`: the analyst side.\n"""\n',
    "workbench/he/client.py": "from .session import node_call\n",
    "workbench/he/session.py": "def node_call():\n    pass\n",
    "workbench/he/evaluate.py": "from . import client\n",
    "workbench/smpc/__init__.py": '"""SMPC.\n\n* :mod:`.field`: shares.\n"""\n',
    "workbench/smpc/field.py": "",
    "workbench/smpc/client.py": "from ..he.session import node_call\nfrom . import field\n",
    "workbench/fl/__init__.py": "",
    "workbench/fl/local.py": "def local_round(payload):\n    pass\n",
    "workbench/fl/app/pyproject.toml": '[tool.flwr.app.components]\nserverapp = "workbench.fl.deployment:server_app"\n',
    "tests/__init__.py": "",
    "tests/conftest.py": "",
    "tests/test_he.py": "from pathlib import Path\n\nfrom workbench.he import client\n\n"
                        "OIDC = Path(__file__).parent / 'oidc'\nROOT = Path(__file__).resolve().parents[1]\n\n\n"
                        "def test_x(monkeypatch):\n    monkeypatch.setattr('workbench.he.client.node_call', None)\n",
    "tests/test_notebooks.py": "NOTEBOOKS = 1\n",
    "tests/test_notebooks_channels.py": "from tests.test_notebooks import NOTEBOOKS\n",
    "tests/test_dp_new_feature.py": "from .conftest import *  # noqa\n",
    "tests/test_something_else.py": "",
    "docs/decisions.md": "See `workbench/dp/engine.py`, `dp/node_routes.py`, workbench/he/ and `python -m workbench.dp.engine`;\n"
                         "tests in `tests/test_he.py`.\n",
}


def write_tree(root: Path) -> None:
    for rel, text in OLD_TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def run(root: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def read(root: Path, rel: str) -> str:
    return (root / rel).read_text()


def test_moves_and_rewrites(tmp_path):
    write_tree(tmp_path)
    out = run(tmp_path)
    assert "left    tests/test_something_else.py" in out
    assert not (tmp_path / "workbench/dp").exists() and not (tmp_path / "workbench/he").exists()
    assert read(tmp_path, "workbench/channels/dp/worker.py").startswith(
        "from workbench.errors import InvalidQuery\nfrom workbench.channels.dp.columnar import scan\n")
    assert read(tmp_path, "workbench/channels/dp/routes.py") == (
        "from workbench.channels.dp import worker as engine\nfrom workbench.channels.dp.worker import run\n")
    assert read(tmp_path, "workbench/channels/dp/newly_added.py").startswith("from workbench.channels.dp.worker import")
    assert read(tmp_path, "workbench/channels/dp/federated.py") == "from workbench.channels.dp.worker import run\n"
    assert read(tmp_path, "workbench/node/app.py").splitlines()[1:3] == [
        "    from ..channels.dp import routes as dp_routes", "    from . import tasks"]  # a relative file stays so
    assert '"workbench.channels.dp.worker:run"' in read(tmp_path, "workbench/node/tasks.py")
    assert '"workbench.channels.fl.worker:local_round"' in read(tmp_path, "workbench/node/tasks.py")
    assert read(tmp_path, "workbench/__init__.py") == (
        "from .channels.secagg import kernel as _he_kernel  # noqa: F401\n"
        "from .channels.secagg import he_evaluate as _he_evaluate  # noqa: F401\n")
    assert read(tmp_path, "workbench/channels/secagg/smpc_kernel.py") == (
        "from workbench.channels.secagg.session import node_call\n"
        "from workbench.channels.secagg import smpc_field as field\n")
    merged = read(tmp_path, "workbench/channels/secagg/__init__.py")
    assert ":mod:`workbench.channels.secagg.kernel`" in merged and ":mod:`workbench.channels.secagg.smpc_field`" in merged
    assert "workbench.channels.fl.deployment:server_app" in read(tmp_path, "workbench/channels/fl/app/pyproject.toml")
    for package in ("workbench/channels", "tests/channels", "tests/channels/secagg"):
        assert (tmp_path / package / "__init__.py").exists(), package
    test = read(tmp_path, "tests/channels/secagg/test_he.py")
    assert "from workbench.channels.secagg import kernel as client" in test
    assert "Path(__file__).parents[2] / 'oidc'" in test and "Path(__file__).resolve().parents[3]" in test
    assert "'workbench.channels.secagg.kernel.node_call'" in test
    assert read(tmp_path, "tests/e2e/test_notebooks_channels.py") == "from tests.e2e.test_notebooks import NOTEBOOKS\n"
    assert read(tmp_path, "tests/channels/dp/test_dp_new_feature.py").startswith("from tests.conftest import")
    docs = read(tmp_path, "docs/decisions.md")
    assert "`workbench/channels/dp/worker.py`, `channels/dp/routes.py`, workbench/channels/secagg/" in docs
    assert "python -m workbench.channels.dp.worker" in docs and "`tests/channels/secagg/test_he.py`" in docs


def test_idempotent_and_deterministic(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_tree(first)
    write_tree(second)
    run(first)
    run(second)
    assert "nothing to do" in run(first)  # a second run changes nothing
    diff = filecmp.dircmp(first, second)

    def same(d: filecmp.dircmp) -> bool:
        return not (d.left_only or d.right_only or d.diff_files) and all(same(s) for s in d.subdirs.values())

    assert same(diff)


def test_dry_run_changes_nothing(tmp_path):
    write_tree(tmp_path)
    out = run(tmp_path, "--dry-run")
    assert "move    workbench/dp/engine.py -> workbench/channels/dp/worker.py" in out
    assert read(tmp_path, "workbench/dp/node_routes.py") == OLD_TREE["workbench/dp/node_routes.py"]
