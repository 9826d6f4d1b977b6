"""The embedded engine: Flower's simulation runtime (Ray) in this process, nodes reached over HTTP.

Ray is started with few CPUs, no dashboard, loopback only, its files under a
private temporary folder, and shut down after the job. Embedded demo nodes
(``wb.connect()``) are served on a loopback port for the job's duration so
the Ray actors can reach them.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from .forward import NodeLink, simulation_client_app
from .serverapp import run_server

log = logging.getLogger(__name__)

__all__ = ["flower_env", "run_simulation_job", "serve_embedded"]

_ray_lock = threading.Lock()


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


def run_simulation_job(links: list[NodeLink], config: dict, sink: Callable[[dict], None],
                       num_cpus: int = 2) -> None:
    """Run one job on Flower's simulation engine; events go to ``sink``."""
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    server_app = ServerApp()

    @server_app.main()
    def _main(grid, context) -> None:
        run_server(grid, context, config, sink)

    cpus = max(1, min(num_cpus, len(links)))
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False,
                             "_node_ip_address": "127.0.0.1", "logging_level": logging.ERROR,
                             "log_to_driver": False, "configure_logging": True}}
    with _ray_lock, flower_env() as root:
        backend["init_args"]["_temp_dir"] = os.path.join(root, "ray")
        flwr_logger = logging.getLogger("flwr")
        level = flwr_logger.level
        flwr_logger.setLevel(logging.WARNING)
        try:
            run_simulation(server_app=server_app, client_app=simulation_client_app(links),
                           num_supernodes=len(links), backend_config=backend)
        finally:
            flwr_logger.setLevel(level)
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
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
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
