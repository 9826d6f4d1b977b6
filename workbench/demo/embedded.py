"""The embedded demo node: the same app, in this process, over an in-process transport.

State (ledger, audit, tokens) lives under ``$WORKBENCH_HOME/embedded`` so
budgets survive a kernel restart, as they would on a real node.
"""

from __future__ import annotations

import atexit
import threading
import warnings

from .._version import __version__
from ..client.connection import Node
from ..config import data_home
from ..protocol import PROTOCOL_HEADER, PROTOCOL_VERSION

_lock = threading.Lock()
_services: dict[str, object] = {}


def connect_embedded(hospital: str = "hospital_a") -> Node:
    """A :class:`Node` backed by an in-process demo node (one per process and hospital)."""
    from ..node.service import NodeService
    from ..node.settings import NodeConfig
    from ..server import create_app
    from .nodes import ensure_accounts, write_config

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette nags about httpx; its in-process transport is what we want
        from starlette.testclient import TestClient

    root = data_home() / "embedded"
    with _lock:
        entry = _services.get(hospital)
        if entry is None:
            config = NodeConfig.load(write_config(root, hospital))
            service = NodeService(config)
            accounts = ensure_accounts(service)
            atexit.register(service.close)  # stop its worker processes with the kernel
            entry = (service, create_app(service), accounts)
            _services[hospital] = entry
    service, app, accounts = entry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecation notice may also fire on construction
        http = TestClient(app, base_url="http://embedded.workbench", raise_server_exceptions=False)
    http.headers.update({PROTOCOL_HEADER: PROTOCOL_VERSION, "User-Agent": f"workbench/{__version__}",
                         "Authorization": f"Bearer {accounts.analyst_token}"})
    return Node(http, url=f"embedded://{hospital}", embedded=True)
