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
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..config import DEMO_NODES_ENV, data_home, save_connection
from .data import HOSPITALS
from .nodes import ensure_accounts, write_config

REPO_NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


#: The DP mock every demo dataset gets at start-up, paid once from the dataset's cap (docs/teaching.md).
DEMO_MOCK = {"method": "independent", "rows": 1000, "bins": 8, "epsilon": 1.0}


def node_urls(first_port: int = 8765) -> dict[str, str]:
    return {h: f"http://127.0.0.1:{first_port + i}" for i, h in enumerate(HOSPITALS)}


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def prepare(root: Path, urls: dict[str, str], save: bool = True,
            mock: bool = True) -> tuple[dict[str, Path], dict[str, str]]:
    """Configs, accounts and DP mocks for the demo nodes at ``urls`` (the nodes in parallel).

    Returns each hospital's config path and analyst token; ``save`` also stores the analyst's
    connections in the client config (what the JupyterLab panel reads).
    """
    from concurrent.futures import ThreadPoolExecutor

    configs = {hospital: write_config(root, hospital, port=_port(url)) for hospital, url in urls.items()}
    with ThreadPoolExecutor(len(configs)) as pool:
        tokens = dict(zip(configs, pool.map(lambda path: _provision(path, mock), configs.values())))
    if save:
        for hospital, url in urls.items():
            save_connection(hospital.replace("_", "-"), url, tokens[hospital])
    return configs, tokens


def _provision(config: Path, mock: bool) -> str:
    """The demo accounts (and the DP mock) of one node that is not running yet; returns the analyst's token."""
    from ..node.service import NodeService
    from ..node.settings import NodeConfig

    service = NodeService(NodeConfig.load(config), start_workers=False)
    try:
        accounts = ensure_accounts(service)
        if mock:
            publish_demo_mock(service)
    finally:
        service.close()
    return accounts.analyst_token


def publish_demo_mock(service, dataset: str = "patients") -> None:
    """Publish ``dataset``'s DP mock once (``DEMO_MOCK``, charged to the dataset's cap) unless it has a current one."""
    from ..channels.synth import mocks
    from ..channels.synth.wire import SynthSpec

    entry = service.catalog.get(dataset)
    found = mocks.info(service, entry)
    if found is not None and found.current:
        return
    spec = SynthSpec(method=DEMO_MOCK["method"], rows=DEMO_MOCK["rows"], bins=DEMO_MOCK["bins"])
    mocks.publish_with_progress(service, dataset, spec, DEMO_MOCK["epsilon"], None, progress=False)


def wait_healthy(url: str, timeout_s: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers its health check; fail at once if ``proc`` (the server meant to answer) ended,
    e.g. because another program took its port meanwhile."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with status {proc.returncode} (its output is above)")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"node at {url} did not become healthy in {timeout_s:g} s")


def taken_port_message(urls: dict[str, str]) -> str | None:
    """Why the demo nodes cannot start at ``urls`` (a running demo or another program listens there), or None.

    Checked before anything is reset or written: a second ``workbench demo`` would otherwise rewrite the
    running demo's tokens and state under it and die with a traceback.
    """
    import socket

    for url in urls.values():
        try:
            socket.create_connection(("127.0.0.1", _port(url)), timeout=2).close()
        except OSError:
            continue  # nobody listens: free
        try:
            ours = httpx.get(url + "/v1/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            ours = False
        if ours:
            return (f"A Workbench node already answers at {url}: a demo is probably running in another terminal. "
                    "Use it as it is, or stop it (Ctrl-C in its terminal) before starting or resetting the demo "
                    "(`workbench demo --reset` resets a stopped demo). Nothing was changed.")
        return (f"Port {_port(url)} is in use by another program. Start the demo on other ports: "
                "`workbench demo --port N` (nodes on N..N+2). Nothing was changed.")
    return None


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_aggregator(root: Path, port: int, quiet: bool = False) -> tuple[subprocess.Popen, str, dict[str, str]]:
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
                            start_new_session=True, stdout=subprocess.DEVNULL if quiet else None,
                            stderr=subprocess.DEVNULL if quiet else None)
    return proc, f"http://127.0.0.1:{port}", tokens


def trust_aggregator(configs: dict[str, Path], url: str, tokens: dict[str, str], urls: dict[str, str]) -> None:
    """Each demo node's owner trusts the aggregator at ``url`` (``PUT /v1/he/aggregators/demo``)."""
    from ..node.settings import NodeConfig

    for hospital, path in configs.items():
        owner = (NodeConfig.load(path).node.state_dir / "owner.token").read_text().strip()
        body = {"url": url, "token": tokens[hospital.replace("_", "-")]}
        r = httpx.put(f"{urls[hospital]}/v1/he/aggregators/demo", json=body,
                      headers={"Authorization": f"Bearer {owner}"}, timeout=30)
        r.raise_for_status()


def start_nodes(configs: dict[str, Path], quiet: bool = False) -> list[subprocess.Popen]:
    out = subprocess.DEVNULL if quiet else None
    return [subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config", str(path)],
                             start_new_session=True, stdout=out, stderr=out)
            for path in configs.values()]


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


@dataclass
class DemoNodes:
    """Three running demo hospital nodes and the aggregator they trust."""

    urls: dict[str, str]
    aggregator: str
    tokens: dict[str, str]
    procs: list[subprocess.Popen] = field(default_factory=list)

    def stop(self) -> None:
        stop(self.procs)
        self.procs = []


def start_demo(root: Path, urls: dict[str, str], aggregator_port: int, *, save: bool = True,
               quiet: bool = False, mock: bool = True) -> DemoNodes:
    """Prepare and start the demo nodes at ``urls`` and an aggregator; wait until all answer.

    Whatever was started is stopped again if anything fails on the way.
    """
    configs, tokens = prepare(root, urls, save=save, mock=mock)
    demo = DemoNodes(urls=dict(urls), aggregator="", tokens=tokens, procs=start_nodes(configs, quiet))
    try:
        agg_proc, demo.aggregator, agg_tokens = start_aggregator(root, aggregator_port, quiet)
        demo.procs.append(agg_proc)
        for url, proc in zip(urls.values(), demo.procs):
            wait_healthy(url, 120, proc)
        wait_healthy(demo.aggregator, 120, agg_proc)
        trust_aggregator(configs, demo.aggregator, agg_tokens, urls)
    except BaseException:
        demo.stop()
        raise
    return demo


def reset_state(root: Path) -> list[Path]:
    """Forget every demo node's ledger, grants, releases and mocks under ``root`` (the data stays)."""
    import shutil

    removed = []
    for folder in (root / "state", root / "aggregator"):
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(folder)
    return removed


def lab_settings(root: Path) -> Path:
    """JupyterLab's app settings for the demo: the environment's own, plus no news pop-up over the panel."""
    import json
    import shutil

    target = root / "lab-settings"
    target.mkdir(parents=True, exist_ok=True)
    default = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings"
    overrides = {}
    if default.is_dir():
        for item in default.iterdir():
            if item.is_file():
                shutil.copyfile(item, target / item.name)
        if (default / "overrides.json").exists():
            overrides = json.loads((default / "overrides.json").read_text() or "{}")
    overrides.setdefault("@jupyterlab/apputils-extension:notification", {}).update(
        {"fetchNews": "false", "checkForUpdates": False})
    (target / "overrides.json").write_text(json.dumps(overrides, indent=1))
    return target


def lab_command(lab_port: int, notebooks: Path, settings: Path, lab_args: tuple[str, ...] = ()) -> list[str]:
    """``jupyter lab`` for the demo: loopback, the notebooks folder, ``--allow-root`` when run as root.

    An option the user passes in ``lab_args`` replaces the demo's own (JupyterLab refuses one given twice).
    """
    given = {arg.split("=", 1)[0] for arg in lab_args if arg.startswith("--")}
    defaults = [("--no-browser", None), ("--ip", "127.0.0.1"), ("--port", str(lab_port)),
                ("--ServerApp.root_dir", str(notebooks)), ("--LabApp.app_settings_dir", str(settings))]
    cmd = [sys.executable, "-m", "jupyter", "lab"]
    cmd += [key if value is None else f"{key}={value}" for key, value in defaults if key not in given]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in given:
        cmd.append("--allow-root")  # containers, Codespaces, CI: JupyterLab refuses root without it
    return cmd + list(lab_args)


def _explain_lab_exit(code: int) -> None:
    print(f"\nJupyterLab stopped (exit status {code}); the demo nodes keep running. Read its message above.\n"
          "  - As root, JupyterLab needs --allow-root (added automatically; pass other options after '--',\n"
          "    e.g. `workbench demo -- --port-retries=50`).\n"
          "  - Port busy: `workbench demo --lab-port 8899`.\n"
          "  - Start JupyterLab yourself beside the nodes: `workbench demo --no-lab`, then `jupyter lab` in\n"
          f"    another terminal with {DEMO_NODES_ENV} set as printed above.\n"
          "Press Ctrl-C to stop the nodes.", flush=True)


def run_demo(lab: bool = True, first_port: int = 8765, lab_port: int = 8888, root: Path | None = None,
             lab_args: tuple[str, ...] = (), reset: bool = False) -> int:
    root = root or data_home() / "demo"
    urls = node_urls(first_port)
    taken = taken_port_message(urls)
    if taken:
        print(taken, file=sys.stderr, flush=True)
        return 1
    if reset:
        from .embedded import reset_embedded

        for folder in reset_embedded():
            print(f"Reset: removed {folder} (the embedded node's ledger).", flush=True)
        for folder in reset_state(root):
            print(f"Reset: removed {folder} (demo budgets, grants, releases, mocks; the data stays).", flush=True)
    print(f"Preparing demo nodes under {root} (first start: publishing a DP mock per node) ...", flush=True)
    demo = start_demo(root, urls, first_port + len(HOSPITALS))
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    lab_proc = None
    try:
        print("Demo nodes are up:")
        for hospital, url in urls.items():
            print(f"  {hospital.replace('_', '-'):12s} {url}/v1/docs")
        print(f"  {'aggregator':12s} {demo.aggregator}/v1/docs  (trusted by every demo node: secure sums find it)")
        print(f"Notebooks: wb.connect() is the first demo node, wb.demo_federation() all three "
              f"({DEMO_NODES_ENV}={','.join(urls.values())}).")
        if lab:
            notebooks = REPO_NOTEBOOKS if REPO_NOTEBOOKS.exists() else Path.cwd()
            env = dict(os.environ, **{DEMO_NODES_ENV: ",".join(urls.values())})
            cmd = lab_command(lab_port, notebooks, lab_settings(root), lab_args)
            if "--allow-root" in cmd and "--allow-root" not in lab_args:
                print("Running as root: JupyterLab gets --allow-root.", flush=True)
            lab_proc = subprocess.Popen(cmd, start_new_session=True, env=env)
            print(f"JupyterLab is starting at http://127.0.0.1:{lab_port}/lab (the URL with its token follows). "
                  "Open the 'Workbench' panel in the left sidebar.", flush=True)
        else:
            print("Press Ctrl-C to stop.", flush=True)
        while not stopping and all(p.poll() is None for p in demo.procs):
            if lab_proc is not None and lab_proc.poll() is not None:
                _explain_lab_exit(lab_proc.returncode)
                lab_proc = None
            time.sleep(0.5)
        dead = [p for p in demo.procs if p.poll() is not None]
        if dead and not stopping:
            print(f"A demo process stopped (exit status {dead[0].returncode}); stopping the others.", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        print("Stopping demo ...", flush=True)
        demo.stop()
        if lab_proc is not None:
            stop([lab_proc])
    return 0
