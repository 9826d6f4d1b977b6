"""``wb.demo_federation()``: three demo hospitals that need nothing running beforehand.

Inside ``workbench demo`` (or on Binder), ``$WORKBENCH_DEMO_NODES`` names the
running demo nodes, and the federation is theirs (the ones the JupyterLab
panel shows). Anywhere else (a fresh papermill run, CI, a laptop) the first
call starts three demo hospital nodes and a secure-aggregation server on free
loopback ports, with their state in a temporary folder, for the lifetime of
this Python process: they are stopped (by process group) when it exits, and
the next kernel starts afresh with full budgets.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import tempfile
import threading
from pathlib import Path

from ..client.connection import connect
from ..client.federation import Federation, federation
from ..config import demo_node_urls

__all__ = ["demo_federation", "stop_demo_federation"]

_lock = threading.Lock()
_running: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_federation() -> Federation:
    """The three demo hospitals as a :class:`~workbench.Federation` (aggregator included).

    The running ``workbench demo`` nodes if there are any; else three loopback nodes and an
    aggregator started now (a few seconds) and stopped when this process exits.
    """
    urls = demo_node_urls()
    if len(urls) > 1:
        return federation(urls)
    from .data import HOSPITALS  # numpy and polars: only when nodes are started here
    from .launcher import start_demo

    with _lock:
        demo = _running.get("demo")
        if demo is None:
            root = Path(tempfile.mkdtemp(prefix="workbench-federation-"))
            print("Starting three demo hospital nodes and an aggregator on loopback for this kernel "
                  "(stopped when it exits) ...", flush=True)
            try:
                demo = start_demo(root, {h: f"http://127.0.0.1:{_free_port()}" for h in HOSPITALS}, _free_port(),
                                  save=False, quiet=True, mock=False)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            _running.update(demo=demo, root=root)
            atexit.register(stop_demo_federation)
    return Federation([connect(url, token=demo.tokens[h]) for h, url in demo.urls.items()])


def stop_demo_federation() -> None:
    """Stop the nodes :func:`demo_federation` started in this process and delete their state."""
    with _lock:
        demo, root = _running.pop("demo", None), _running.pop("root", None)
    if demo is not None:
        demo.stop()
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)
