"""Which Flower apps a node runs: the built-in Workbench app, and FABs its owner allowed by sha256.

A Flower app bundle (FAB) is code that runs with the SuperNode's privileges,
so a node runs only (a) the built-in Workbench app, whose FAB holds no code of
its own (its ``pyproject.toml`` names modules of the installed ``workbench``
package), or (b) a FAB whose exact sha256 the owner listed in
``[fl] allowed_fabs``. FAB builds are deterministic, so the owner can build the
app they reviewed with ``flwr build`` and copy the hash it prints.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from workbench.errors import NotAuthorized
from workbench.channels.fl.trainers import TRAINERS, Hyperparameters

__all__ = ["APP_DIR", "builtin_fab", "builtin_fab_sha256", "check_fab", "describe", "write_app_dir"]

APP_DIR = Path(__file__).parent / "app"

PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "workbench-fl"
version = "1.0.0"
description = "Workbench built-in federated training (code lives in the installed workbench package)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "workbench"

[tool.flwr.app.components]
serverapp = "workbench.channels.fl.deployment:server_app"
clientapp = "workbench.channels.fl.deployment:client_app"

[tool.flwr.app.config]
job-ids = "{}"
job-config = "{}"
"""


def write_app_dir(folder: Path) -> Path:
    """The built-in app as a Flower app folder (only a pyproject.toml)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    return folder


@functools.lru_cache(maxsize=1)
def builtin_fab() -> bytes:
    """The built-in app's FAB bytes (deterministic)."""
    import tempfile

    from flwr.cli.build import build_fab_from_disk

    with tempfile.TemporaryDirectory() as tmp:
        return build_fab_from_disk(write_app_dir(Path(tmp) / "workbench-fl"))


def builtin_fab_sha256() -> str:
    return hashlib.sha256(builtin_fab()).hexdigest()


def allowed_hashes(config) -> set[str]:
    return {builtin_fab_sha256(), *(h.lower() for h in config.fl.allowed_fabs)}


def check_fab(config, fab_hash: str) -> None:
    """Refuse (``fl_fab_not_allowed``) a FAB the owner did not allow by its exact sha256."""
    if fab_hash.lower() not in allowed_hashes(config):
        raise NotAuthorized(f"This node runs only the built-in Workbench app or Flower apps its owner allowed by "
                            f"sha256; {fab_hash[:16]}... is not allowed (add it to [fl] allowed_fabs after "
                            "reviewing its code).", code="fl_fab_not_allowed")


def describe(config) -> dict:
    """What this node will train: built-in models and hyperparameters, allowed FAB hashes."""
    try:
        builtin = builtin_fab_sha256()
    except Exception:  # noqa: BLE001 - flwr CLI internals moved: still describe the models
        builtin = None
    return {"models": {name: {"task": t.task} for name, t in sorted(TRAINERS.items())},
            "hyperparameters": Hyperparameters.model_json_schema(),
            "builtin_fab_sha256": builtin, "allowed_fabs": list(config.fl.allowed_fabs),
            "supernode": config.fl.superlink is not None}
