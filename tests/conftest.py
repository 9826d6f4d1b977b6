"""Shared fixtures: demo configs in temp folders, a real node over loopback, an in-process app."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_home(tmp_path_factory):
    """Keep every test's state, configs and logs out of the real home directory."""
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("WORKBENCH_HOME", "WORKBENCH_CONFIG", "WORKBENCH_TOKEN", "WORKBENCH_URL",
                                          "XDG_DATA_HOME", "XDG_CONFIG_HOME", "MPLBACKEND")}
    os.environ.update({"WORKBENCH_HOME": str(home / "workbench"), "WORKBENCH_CONFIG": str(home / "config.toml"),
                       "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
                       "MPLBACKEND": "Agg"})
    os.environ.pop("WORKBENCH_TOKEN", None)
    os.environ.pop("WORKBENCH_URL", None)
    yield home
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(root: Path, hospital: str = "hospital_a", **node_overrides) -> Path:
    """A demo node config under ``root``; ``node_overrides`` patch the [node] table."""
    import tomllib

    import tomli_w

    from workbench.demo.nodes import write_config

    path = write_config(root, hospital, port=free_port())
    if node_overrides:
        raw = tomllib.loads(path.read_text())
        raw["node"].update(node_overrides)
        path.write_text(tomli_w.dumps(raw))
    return path


@dataclass
class RunningNode:
    url: str
    config_path: Path
    analyst_token: str
    owner_token: str
    process: subprocess.Popen

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_node(config_path: Path, port: int | None = None) -> subprocess.Popen:
    import tomllib

    port = port or tomllib.loads(config_path.read_text())["node"]["port"]
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(config_path),
                             "--port", str(port)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # generous: a loaded 2-core machine starts Python slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("node did not start in 180 s")


def start_aggregator(state: Path) -> tuple[subprocess.Popen, str]:
    """``workbench aggregator serve`` on a free loopback port, in its own process session."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "aggregator", "serve", "--state", str(state),
                             "--host", "127.0.0.1", "--port", str(port)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180  # generous: a loaded 2-core machine starts Python slowly
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("aggregator did not start in 60 s")


def provision(config_path: Path):
    from workbench.demo.nodes import ensure_accounts
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(config_path), start_workers=False)
    try:
        return ensure_accounts(service)
    finally:
        service.close()


def launch(root: Path, hospital: str = "hospital_a", **node_overrides) -> RunningNode:
    config_path = make_config(root, hospital, **node_overrides)
    accounts = provision(config_path)
    proc = start_node(config_path)
    import tomllib

    port = tomllib.loads(config_path.read_text())["node"]["port"]
    return RunningNode(f"http://127.0.0.1:{port}", config_path, accounts.analyst_token, accounts.owner_token, proc)


@pytest.fixture
def running_node(tmp_path):
    """A real ``workbench node serve`` process on a free loopback port (demo data, demo accounts)."""
    node = launch(tmp_path)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory):
    """One real node for a whole test module (tests must not rely on its budget state)."""
    node = launch(tmp_path_factory.mktemp("node"))
    yield node
    node.stop()


@pytest.fixture
def service(tmp_path):
    """An in-process NodeService over demo data (no HTTP)."""
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    svc = NodeService(NodeConfig.load(make_config(tmp_path)), start_workers=False)
    yield svc
    svc.close()


@pytest.fixture
def app_client(service):
    """The real app over an in-process transport, plus demo tokens."""
    from starlette.testclient import TestClient

    from workbench.demo.nodes import ensure_accounts
    from workbench.server import create_app

    accounts = ensure_accounts(service)
    client = TestClient(create_app(service), raise_server_exceptions=False)
    client.analyst = {"Authorization": f"Bearer {accounts.analyst_token}"}
    client.owner = {"Authorization": f"Bearer {accounts.owner_token}"}
    client.service = service
    yield client
    client.close()


# ---------------------------------------------------------------- both SQL backends


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL server: the one scripts/test started, or our own throwaway cluster."""
    from tests import pg

    url = os.environ.get("WORKBENCH_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not pg.available():
        pytest.skip("PostgreSQL is not installed (scripts/setup --test installs it from Debian's packages)")
    folder = Path(tempfile.mkdtemp(prefix="workbench-pg-"))
    os.chmod(folder, 0o755)
    url = pg.start(folder)
    yield url
    pg.stop(folder)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request, tmp_path):
    """A fresh, empty database on each SQL backend (SQLite file; PostgreSQL database)."""
    if request.param == "sqlite":
        return None  # the node's default: SQLite in its state folder
    from tests import pg

    server = request.getfixturevalue("pg_server")
    return pg.fresh_database(server, f"wb_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def backend_service(tmp_path, db_url):
    """A NodeService on each SQL backend, with the demo accounts."""
    from workbench.demo.nodes import ensure_accounts
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    overrides = {"database_url": db_url} if db_url else {}
    svc = NodeService(NodeConfig.load(make_config(tmp_path, **overrides)), start_workers=False)
    svc.accounts = ensure_accounts(svc)
    yield svc
    svc.close()
