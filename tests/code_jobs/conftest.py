"""Fixtures for code jobs: a node service with a second analyst and owner, notebook clients, a DP mock."""

from __future__ import annotations

import shutil

import pytest

from workbench.client.connection import Node

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None,
                                 reason="bubblewrap is not installed (scripts/setup installs it)")


@pytest.fixture
def jobs_node(service):
    """The real app in-process: ``analyst`` and ``owner`` (demo), ``olga`` (a second owner), each a Node."""
    from starlette.testclient import TestClient

    from workbench.demo.nodes import ensure_accounts
    from workbench.node import admin
    from workbench.node.app import create_app
    from workbench.synth import mocks
    from workbench.synth.fit import run as fit
    from workbench.synth.node_routes import task
    from workbench.synth.spec import SynthSpec

    accounts = ensure_accounts(service)
    tokens = {"analyst": accounts.analyst_token, "owner": accounts.owner_token,
              "olga": admin.add_user(service.store, service.authority, "olga", "owner")}
    app = create_app(service)
    spec = SynthSpec(method="independent", rows=300, columns=["age", "sex", "diagnosis", "visits", "cost",
                                                              "readmitted"])
    entry = service.catalog.get("patients")
    payload = task(service, entry, spec.model_dump(mode="json"), 1.0, None)
    mocks.publish(service, "patients", spec, 1.0, "owner", run=lambda: fit(payload))
    clients = {}
    for name, token in tokens.items():
        http = TestClient(app, base_url="http://jobs.test", raise_server_exceptions=False)
        http.headers["Authorization"] = f"Bearer {token}"
        clients[name] = Node(http, url="test://jobs")
    clients["service"] = service
    yield clients
    for name, node in clients.items():
        if name != "service":
            node.close()
