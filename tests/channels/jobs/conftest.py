"""Fixtures for code jobs: a node with a second owner, notebook clients per user, optional DP mock."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest
import tomli_w

from tests.conftest import make_config
from workbench.client.connection import Node

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (scripts/setup installs it)")

#: Tight sandbox limits for attack tests (a hostile job should be stopped in seconds, not minutes).
TIGHT = {"cpu_seconds": 10, "memory_mb": 2048, "wall_seconds": 45.0, "processes": 64, "work_mb": 64,
         "max_output_mb": 4.0}


def jobs_config(root: Path, code_jobs: dict | None = None) -> Path:
    path = make_config(root)
    if code_jobs:
        raw = tomllib.loads(path.read_text())
        raw["datasets"]["patients"]["code_jobs"] = code_jobs
        path.write_text(tomli_w.dumps(raw))
    return path


def publish_mock(service) -> None:
    """The dataset's public DP mock (what run_on_mock runs on), paid once by the owner."""
    from workbench.channels.synth import mocks
    from workbench.channels.synth.worker import run as fit
    from workbench.channels.synth.routes import task
    from workbench.channels.synth.wire import SynthSpec

    spec = SynthSpec(method="independent", rows=300,
                     columns=["age", "sex", "diagnosis", "visits", "cost", "readmitted"])
    payload = task(service, service.catalog.get("patients"), spec.model_dump(mode="json"), 1.0, None)
    mocks.publish(service, "patients", spec, 1.0, "owner", run=lambda: fit(payload))


def open_node(service) -> dict:
    """The real app in-process: ``analyst`` and ``owner`` (demo), ``olga`` (a second owner), each a Node."""
    from starlette.testclient import TestClient

    from workbench.demo.nodes import ensure_accounts
    from workbench.node import admin
    from workbench.server import create_app

    accounts = ensure_accounts(service)
    tokens = {"analyst": accounts.analyst_token, "owner": accounts.owner_token,
              "olga": admin.add_user(service.store, service.authority, "olga", "owner")}
    app = create_app(service)
    clients: dict = {"service": service}
    for name, token in tokens.items():
        http = TestClient(app, base_url="http://jobs.test", raise_server_exceptions=False)
        http.headers["Authorization"] = f"Bearer {token}"
        clients[name] = Node(http, url="test://jobs")
    return clients


def _node(root: Path, code_jobs: dict | None, mock: bool):
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(jobs_config(root, code_jobs)), start_workers=False)
    clients = open_node(service)
    if mock:
        publish_mock(service)
    return clients


def _close(clients: dict) -> None:
    for name, node in clients.items():
        if name != "service":
            node.close()
    clients["service"].close()


@pytest.fixture
def jobs_node(tmp_path):
    clients = _node(tmp_path, None, mock=True)
    yield clients
    _close(clients)


@pytest.fixture(scope="module")
def tight_node(tmp_path_factory):
    """One node for a module of attack tests, with tight sandbox limits and no mock."""
    clients = _node(tmp_path_factory.mktemp("tight"), TIGHT, mock=False)
    yield clients
    _close(clients)
