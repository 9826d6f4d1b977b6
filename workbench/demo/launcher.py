"""``workbench demo``: three hospital nodes on loopback, optionally JupyterLab beside them.

Each node runs ``workbench node serve`` in its own process session; the
analyst's tokens are saved to the client config (0600 files) so notebooks,
papermill runs and the JupyterLab panel connect with ``wb.connect(url)``.
A secure-aggregation server (``workbench aggregator serve``) starts on the
next port; every demo node trusts it (registered through the owner's API), so
``wb.federation([...]).dataset("patients").secure_sum(...)`` finds it with no
argument (the client picks the one aggregator every node trusts).
Everything started is stopped (by process group) on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from ..config import data_home, save_connection
from .data import HOSPITALS
from .nodes import ensure_accounts, write_config

REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def node_urls(first_port: int = 8765) -> dict[str, str]:
    return {h: f"http://127.0.0.1:{first_port + i}" for i, h in enumerate(HOSPITALS)}


def prepare(root: Path, first_port: int = 8765) -> dict[str, Path]:
    """Write configs and accounts for the three demo nodes; save the analyst's connections."""
    from ..node.service import NodeService
    from ..node.settings import NodeConfig

    configs = {}
    for (hospital, url) in node_urls(first_port).items():
        port = int(url.rsplit(":", 1)[1])
        path = write_config(root, hospital, port=port)
        service = NodeService(NodeConfig.load(path), start_workers=False)
        try:
            accounts = ensure_accounts(service)
        finally:
            service.close()
        save_connection(hospital.replace("_", "-"), url, accounts.analyst_token)
        configs[hospital] = path
    return configs


def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"node at {url} did not become healthy in {timeout_s:g} s")


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_aggregator(root: Path, port: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """Start ``workbench aggregator serve`` (state under ``root/aggregator``) with every demo hospital registered.

    Returns the process, its URL and each node's (fresh) aggregator token. ``port`` is used if free,
    else any free port.
    """
    from ..aggregator.app import add_node

    state = root / "aggregator"
    tokens = {h.replace("_", "-"): add_node(state, h.replace("_", "-")) for h in HOSPITALS}
    if not _port_free(port):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "aggregator", "serve", "--state", str(state),
                             "--host", "127.0.0.1", "--port", str(port), "--name", "demo-aggregator"],
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}", tokens


def trust_aggregator(configs: dict[str, Path], url: str, tokens: dict[str, str], first_port: int = 8765) -> None:
    """Each demo node's owner trusts the aggregator at ``url`` (``PUT /v1/he/aggregators/demo``)."""
    from ..node.settings import NodeConfig

    for (hospital, path), node_url in zip(configs.items(), node_urls(first_port).values()):
        owner = (NodeConfig.load(path).node.state_dir / "owner.token").read_text().strip()
        body = {"url": url, "token": tokens[hospital.replace("_", "-")]}
        r = httpx.put(f"{node_url}/v1/he/aggregators/demo", json=body, headers={"Authorization": f"Bearer {owner}"},
                      timeout=30)
        r.raise_for_status()


def start_nodes(configs: dict[str, Path]) -> list[subprocess.Popen]:
    procs = []
    for path in configs.values():
        procs.append(subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(path)],
                                      start_new_session=True))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def run_demo(lab: bool = True, first_port: int = 8765, lab_port: int = 8888, root: Path | None = None) -> int:
    root = root or data_home() / "demo"
    print(f"Preparing demo nodes under {root} ...", flush=True)
    configs = prepare(root, first_port)
    procs = start_nodes(configs)
    agg_proc, agg_url, agg_tokens = start_aggregator(root, first_port + len(HOSPITALS))
    procs.append(agg_proc)
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    try:
        for url in node_urls(first_port).values():
            wait_healthy(url)
        wait_healthy(agg_url)
        trust_aggregator(configs, agg_url, agg_tokens, first_port)
        print("Demo nodes are up:")
        for hospital, url in node_urls(first_port).items():
            print(f"  {hospital.replace('_', '-'):12s} {url}/v1/docs")
        print(f"  {'aggregator':12s} {agg_url}/v1/docs  (trusted by every demo node: secure sums find it)")
        print("In a notebook:  import workbench as wb; node = wb.connect('http://127.0.0.1:%d')" % first_port)
        if lab:
            notebooks = REPO_NOTEBOOKS if REPO_NOTEBOOKS.exists() else Path.cwd()
            lab_proc = subprocess.Popen(
                [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip", "127.0.0.1", "--port",
                 str(lab_port), f"--ServerApp.root_dir={notebooks}"], start_new_session=True)
            procs.append(lab_proc)
            print(f"JupyterLab is starting at http://127.0.0.1:{lab_port}/lab (the URL with its token follows). "
                  "Open the 'Workbench' panel in the left sidebar.", flush=True)
        else:
            print("Press Ctrl-C to stop.", flush=True)
        while not stopping and all(p.poll() is None for p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping demo ...", flush=True)
        stop(procs)
    return 0
