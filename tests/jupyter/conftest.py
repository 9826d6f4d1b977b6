"""Fixtures for the JupyterLab tests: pytest-jupyter's server fixtures (scoped to
this folder), the server extension switched on, and client configs that point
the extension at real nodes.

The nodes themselves come from ``tests/conftest.py`` (``running_node``,
``shared_node``: real ``workbench node serve`` processes over loopback).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

# pytest-jupyter's fixtures and hooks, imported here (not as a global plugin)
# so its autouse event-loop fixture only touches the tests in this folder.
from pytest_jupyter.jupyter_server import *  # noqa: F403


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"workbench.jupyter": True}}}


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_client_config(path: Path, nodes: dict[str, dict[str, str]]) -> Path:
    """A kernel-library config file (``[nodes.NAME] url, token``)."""
    lines = []
    for name, entry in nodes.items():
        lines.append(f'[nodes."{name}"]')
        lines.extend(f'{key} = "{value}"' for key, value in entry.items())
        lines.append("")
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


@pytest.fixture
def client_config(tmp_path, monkeypatch):
    """Write a client config and point ``WORKBENCH_CONFIG`` at it (for the server extension too)."""

    def use(nodes: dict[str, dict[str, str]]) -> Path:
        path = write_client_config(tmp_path / "workbench-client.toml", nodes)
        monkeypatch.setenv("WORKBENCH_CONFIG", str(path))
        monkeypatch.delenv("WORKBENCH_URL", raising=False)
        monkeypatch.delenv("WORKBENCH_TOKEN", raising=False)
        return path

    return use


@pytest.fixture
def three_nodes(shared_node, client_config):
    """The real node (analyst token), a port where nothing listens, and the real node with a bad token."""
    client_config(
        {
            "hospital": {"url": shared_node.url, "token": shared_node.analyst_token},
            "offline": {"url": f"http://127.0.0.1:{unused_port()}", "token": "not-a-real-token"},
            "badtoken": {"url": shared_node.url, "token": "wb-this-token-is-wrong"},
        }
    )
    return shared_node
