"""The front end is built, shipped and installable from the committed lock."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXT = ROOT / "extensions" / "workbench-lab"
BUILT = ROOT / "workbench" / "labextension"
JLPM = shutil.which("jlpm", path=str(Path(sys.executable).parent)) or shutil.which("jlpm")


def test_package_layout():
    pkg = json.loads((EXT / "package.json").read_text())
    assert pkg["name"] == "workbench-lab"
    assert pkg["jupyterlab"]["outputDir"] == "../../workbench/labextension"
    assert pkg["jupyterlab"]["discovery"]["server"]["base"]["name"] == "workbench"
    # index.ts only declares the plugin; the rest lives in its own files, one per panel section.
    assert {"index.ts", "model.ts", "panel.ts", "request.ts", "section.ts", "table.ts"} <= {
        p.name for p in (EXT / "src").glob("*.ts")}
    sections = {p.stem for p in (EXT / "src" / "sections").glob("*.ts") if "implements IPanelSection" in p.read_text()}
    assert {"nodes", "catalog", "budgets", "requests", "history"} <= sections
    panel = (EXT / "src" / "panel.ts").read_text()
    for name in sections:  # every panel section is imported by the panel and listed in SECTIONS
        assert f"from './sections/{name}'" in panel, name
    # The owner view (owner.ts with its reviews and jobs parts) hangs below the sections, shown to owners only.
    assert "from './sections/owner'" in panel
    assert (EXT / "yarn.lock").exists()
    config = json.loads((ROOT / "jupyter-config" / "server-config" / "workbench.json").read_text())
    assert config == {"ServerApp": {"jpserver_extensions": {"workbench.jupyter": True}}}


def test_extension_points():
    import workbench.jupyter as ext

    assert ext._jupyter_server_extension_points() == [{"module": "workbench.jupyter"}]
    [paths] = ext._jupyter_labextension_paths()
    assert paths["dest"] == "workbench-lab"
    assert Path(paths["src"]) == BUILT


@pytest.mark.skipif(not (BUILT / "package.json").exists(), reason="labextension not built (pip install -e . builds it)")
def test_built_labextension():
    meta = json.loads((BUILT / "package.json").read_text())
    assert meta["name"] == "workbench-lab"
    load = meta["jupyterlab"]["_build"]["load"]
    assert (BUILT / load).exists()
    assert (BUILT / "static" / "style.js").exists()
    bundle = "\n".join(p.read_text() for p in (BUILT / "static").glob("*.js"))
    assert "workbench-lab:plugin" in bundle


@pytest.mark.skipif(JLPM is None or shutil.which("node") is None, reason="jlpm (jupyter-builder) or node missing")
def test_committed_lock_installs_immutable(tmp_path):
    """CI=true makes jlpm (Yarn 3) install with --immutable: the lock must match package.json."""
    work = tmp_path / "ext"
    work.mkdir()
    for name in ("package.json", "yarn.lock", ".yarnrc.yml"):
        shutil.copy(EXT / name, work / name)
    env = dict(os.environ)
    env.update(
        CI="true",
        HOME=str(tmp_path / "home"),
        # The package's own (gitignored) cache folder: reused across runs, never in $HOME.
        YARN_CACHE_FOLDER=str(EXT / ".yarn" / "cache"),
        YARN_GLOBAL_FOLDER=str(tmp_path / "yarn-global"),
        YARN_ENABLE_GLOBAL_CACHE="false",
        npm_config_cache=str(tmp_path / "npm-cache"),
    )
    # Fails at the resolution step if package.json and yarn.lock disagree.
    out = subprocess.run(
        [JLPM, "install", "--immutable", "--mode=skip-build"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (work / "yarn.lock").read_text() == (EXT / "yarn.lock").read_text()
