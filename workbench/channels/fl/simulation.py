"""The embedded engine: Flower's simulation runtime in this process, nodes reached over HTTP.

Flower's simulation runtime (``run_simulation``: in-memory SuperLink state,
grid and message queues) runs the ServerApp in this process. Its *backend*,
which executes the ClientApps, is by default a small thread backend
(``backend="thread"``): our ClientApp only forwards each message to its node
over HTTP, so Ray's actor processes buy nothing, and on a loaded 2-core
machine Ray's start-up failed outright (its dashboard agent missed a 16 s
deadline; see docs/federated_learning.md). ``backend="ray"`` runs Flower's
stock Ray backend instead: few CPUs, no dashboard, loopback only, files under
a private temporary folder, shut down after the job.

Embedded demo nodes (``wb.connect()``) are served on a loopback port for the
job's duration so the ClientApps reach them the same way as remote nodes.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Callable, Iterator

from workbench.channels.fl.forward import NodeLink, close_links, simulation_client_app
from workbench.channels.fl.serverapp import run_server

log = logging.getLogger(__name__)

__all__ = ["flower_env", "run_simulation_job", "serve_embedded"]

_sim_lock = threading.Lock()


@contextmanager
def flower_env() -> Iterator[str]:
    """Private FLWR_HOME / RAY_TMPDIR, no telemetry or update checks (restored afterwards)."""
    root = tempfile.mkdtemp(prefix="wbfl")  # short path: Ray's socket names must stay < 108 bytes
    values = {"FLWR_HOME": os.path.join(root, "flwr"), "RAY_TMPDIR": os.path.join(root, "ray"),
              "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0",
              "RAY_DEDUP_LOGS": "0"}
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield root
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def _thread_backend_class():
    from flwr.clientapp.client_app import ClientAppException
    from flwr.server.superlink.fleet.vce.backend import Backend

    class ThreadBackend(Backend):
        """Runs ClientApps in the simulation runtime's own worker threads (no Ray)."""

        def __init__(self, backend_config) -> None:
            super().__init__(backend_config)
            init = backend_config.get("init_args", {}) if backend_config else {}
            self._workers = max(1, int(init.get("num_cpus", 2)))
            self.app_fn = None

        def build(self, app_fn) -> None:
            self.app_fn = app_fn

        @property
        def num_workers(self) -> int:
            return self._workers

        def is_worker_idle(self) -> bool:
            return True

        def terminate(self) -> None:
            pass

        def process_message(self, message, context):
            try:
                return self.app_fn()(message=message, context=context), context
            except Exception as ex:  # noqa: BLE001 - reported to the ServerApp as an error reply
                raise ClientAppException(str(ex)) from ex

    return ThreadBackend


_RAY_BACKEND_MODULE = "flwr.server.superlink.fleet.vce.backend.raybackend"


@contextmanager
def _thread_backend() -> Iterator[None]:
    """Serve Flower's backend lookup with the thread backend while one simulation runs.

    Flower's runtime imports ``RayBackend`` from its ``raybackend`` module when
    it starts; a stand-in module answers that import, so Ray itself is never
    imported (importing it alone took ~17 s on a loaded 2-core machine).
    """
    import sys
    import types

    original = sys.modules.get(_RAY_BACKEND_MODULE)
    stand_in = types.ModuleType(_RAY_BACKEND_MODULE)
    stand_in.RayBackend = _thread_backend_class()
    sys.modules[_RAY_BACKEND_MODULE] = stand_in
    try:
        yield
    finally:
        if original is None:
            sys.modules.pop(_RAY_BACKEND_MODULE, None)
        else:
            sys.modules[_RAY_BACKEND_MODULE] = original


def run_simulation_job(links: list[NodeLink], config: dict, sink: Callable[[dict], None],
                       num_cpus: int = 2, backend: str = "thread") -> None:
    """Run one job on Flower's simulation engine; events go to ``sink``."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        run_server(grid, context, config, sink)

    if backend not in ("thread", "ray"):
        raise ValueError("backend must be 'thread' or 'ray'")
    if backend == "thread":
        backend_config = {"init_args": {"num_cpus": max(1, len(links))}}
    else:
        backend_config = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                          "init_args": {"num_cpus": max(1, min(num_cpus, len(links))), "num_gpus": 0,
                                        "include_dashboard": False, "_node_ip_address": "127.0.0.1",
                                        "logging_level": logging.ERROR, "log_to_driver": False}}
    with _sim_lock, flower_env() as root, ExitStack() as stack:
        if backend == "thread":
            stack.enter_context(_thread_backend())
        else:
            backend_config["init_args"]["_temp_dir"] = os.path.join(root, "ray")
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.CRITICAL)
        try:
            run_simulation(server_app=server_app, client_app=simulation_client_app(links),
                           num_supernodes=len(links), backend_config=backend_config)
        finally:
            flwr_logger.setLevel(level)
            close_links(links)
            if backend == "ray":
                try:
                    import ray

                    if ray.is_initialized():
                        ray.shutdown()
                except Exception:  # noqa: BLE001
                    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_embedded(app) -> Iterator[str]:
    """Serve an in-process node app on a loopback port while the block runs; yields its URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                                           ws="none"))
    thread = threading.Thread(target=server.run, daemon=True, name="workbench-fl-embedded")
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
