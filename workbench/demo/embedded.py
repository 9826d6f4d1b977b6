"""The embedded demo node: the same app, in this process, over an in-process transport.

State (ledger, audit, tokens) lives under ``$WORKBENCH_HOME/embedded/<env>``,
one folder per user and Python environment (``<env>`` names ``sys.prefix``),
so budgets survive a kernel restart, as they would on a real node, while a
fresh environment (a new venv, a container, CI) starts with a full budget.
``wb.connect(reset=True)`` or ``workbench demo --reset`` forget it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import threading
import warnings
from pathlib import Path

from .._version import __version__
from ..client.connection import Node
from ..config import embedded_root
from ..protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

_lock = threading.Lock()
_services: dict[str, object] = {}
_panel_stops: dict[str, object] = {}  # hospital -> stops its loopback face for the panel


#: ``1``: serve the embedded node to the JupyterLab panel even outside a notebook kernel started by Jupyter.
PANEL_ENV = "WORKBENCH_PANEL_EMBEDDED"


def reset_embedded() -> list[Path]:
    """Forget the embedded node's ledger, grants, releases and tokens (its data files stay).

    A node already running in this process is closed first; the next connect starts afresh.
    """
    with _lock:
        for service, _app, _accounts in _services.values():
            service.close()
        _services.clear()
        for stop in _panel_stops.values():
            stop()
        _panel_stops.clear()
    state = embedded_root() / "state"
    if state.exists():
        shutil.rmtree(state)
        return [state]
    return []


def connect_embedded(hospital: str = "hospital_a", reset: bool = False) -> Node:
    """A :class:`Node` backed by an in-process demo node (one per process and hospital)."""
    from ..node.service import NodeService
    from ..node.settings import NodeConfig
    from ..server import create_app
    from .nodes import ensure_accounts, write_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette nags about httpx; its in-process transport is what we want
        from starlette.testclient import TestClient

    if reset:
        reset_embedded()
    root = embedded_root()
    with _lock:
        entry = _services.get(hospital)
        if entry is None:
            config = NodeConfig.load(write_config(root, hospital))
            service = NodeService(config)
            accounts = ensure_accounts(service)
            atexit.register(service.close)  # stop its worker processes with the kernel
            entry = (service, create_app(service), accounts)
            _services[hospital] = entry
            if os.environ.get("JPY_SESSION_NAME") or os.environ.get(PANEL_ENV) == "1":
                _panel_stops[hospital] = _serve_for_panel(entry[1], accounts.analyst_token, hospital)
    service, app, accounts = entry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice may also fire on construction
        http = TestClient(app, base_url="http://embedded.workbench", raise_server_exceptions=False)
    http.headers.update({PROTOCOL_HEADER: PROTOCOL_VERSION, "User-Agent": f"workbench/{__version__}",
                         "Authorization": f"Bearer {accounts.analyst_token}"})
    return Node(http, url=f"embedded://{hospital}", embedded=True)


def _serve_for_panel(app, token: str, hospital: str):
    """Serve the embedded node on a free loopback port while this kernel lives, for the JupyterLab panel.

    The Jupyter server finds it through a 0600 file ``<embedded root>/panel/<pid>-<hospital>.json``
    (URL and the analyst's token, as the client config holds them) and lists it as ``embedded-<pid>``;
    the file is removed when the kernel exits. Only inside a kernel that Jupyter started for a notebook
    (``$JPY_SESSION_NAME``), so papermill runs and scripts open no port.
    """
    import socket

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           ws="none"))
    threading.Thread(target=server.run, daemon=True, name="workbench-embedded-panel").start()
    folder = embedded_root() / "panel"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{hospital}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"name": f"embedded-{os.getpid()}", "url": f"http://127.0.0.1:{port}", "token": token,
                   "pid": os.getpid()}, fh)

    def _stop() -> None:
        server.should_exit = True
        path.unlink(missing_ok=True)

    atexit.register(_stop)
    return _stop
