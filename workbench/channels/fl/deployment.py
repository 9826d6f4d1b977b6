"""The deployment engine: Flower's SuperLink and one SuperNode per Workbench node, on separate processes.

* ``workbench fl superlink``: ``flower-superlink`` (one HTTP port for the Fleet,
  Control and Runtime APIs). It runs the ServerApp of the built-in FAB
  (:data:`server_app` here), which reports rounds as log lines that
  ``flwr run --stream`` relays to the analyst.
* ``workbench node serve`` with ``[fl] superlink = ...``: ``flower-supernode
  --isolation process`` bound to this node (``--node-config`` names the node,
  its URL and the node-local key file) plus :mod:`workbench.channels.fl.executor`, which
  launches a ClientApp only for a FAB whose sha256 the node allows.
* The analyst: :func:`run_deployment_job` submits the built-in app with
  ``flwr run`` and the job ids each node issued.

Every process starts in its own session and is killed by process group.
Loopback without TLS is for tests and demos; real sites use TLS and
SuperNode authentication (docs/federated_learning.md).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from workbench.errors import ComputationFailed
from workbench.channels.fl.serverapp import EVENT_PREFIX, run_server

log = logging.getLogger(__name__)

__all__ = ["client_app", "flower_env_vars", "run_deployment_job", "server_app", "start_superlink",
           "start_supernode", "stop_group"]


# ---------------------------------------------------------------- the FAB's components


def _server_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def _main(grid, context) -> None:
        config = json.loads(str(context.run_config["job-config"]))
        run_server(grid, context, config, _log_sink)

    return app


def _log_sink(event: dict) -> None:
    from flwr.common.logger import log as flwr_log

    flwr_log(logging.INFO, EVENT_PREFIX + json.dumps(event))


def __getattr__(name: str):  # the FAB names these; build them on first use (flwr imports stay lazy)
    if name == "server_app":
        return _server_app()
    if name == "client_app":
        from workbench.channels.fl.forward import deployment_client_app

        return deployment_client_app()
    raise AttributeError(name)


# ---------------------------------------------------------------- processes


def flower_env_vars(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # flower-superexec, flwr-clientapp, ... of this environment
    path = os.environ.get("PATH", "")
    return dict(os.environ, FLWR_HOME=str(home), FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1",
                RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                PATH=path if bin_dir in path.split(os.pathsep) else bin_dir + os.pathsep + path)


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Terminate a process started in its own session, and everything it started (even detached children)."""
    descendants = []
    try:
        import psutil

        descendants = psutil.Process(proc.pid).children(recursive=True)
    except Exception:  # noqa: BLE001 - psutil missing or the process already gone
        pass
    _stop_leader(proc, timeout)
    for child in descendants:
        try:
            child.kill()
        except Exception:  # noqa: BLE001 - already gone
            pass


def _stop_leader(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    else:  # the leader is gone; children of the session may remain
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def start_superlink(port: int, state: Path, host: str = "127.0.0.1", certificates: tuple[Path, Path, Path] | None = None,
                    auth_keys: Path | None = None, stdout=None) -> subprocess.Popen:
    """``flower-superlink`` on ``host:port`` (all APIs), state under ``state``, in its own session."""
    state.mkdir(parents=True, exist_ok=True)
    cmd = [_bin("flower-superlink"), "--host", host, "--port", str(port), "--database", str(state / "superlink.db"),
           "--disable-runtime-dependency-installation"]
    if certificates:
        ca, cert, key = certificates
        cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    else:
        cmd.append("--insecure")
    if auth_keys:
        cmd += ["--enable-supernode-auth", "--auth-list-public-keys", str(auth_keys)]
    return subprocess.Popen(cmd, env=flower_env_vars(state / "flwr"), start_new_session=True, cwd=state,
                            stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def run_superlink_foreground(port: int, state: Path, host: str = "127.0.0.1",
                             certificates: tuple[Path, Path, Path] | None = None,
                             auth_keys: Path | None = None) -> int:
    """``workbench fl superlink``: run the SuperLink until it exits or this process is stopped."""
    proc = start_superlink(port, state, host, certificates, auth_keys, stdout=sys.stderr)

    def _stop(signum, _frame):
        stop_group(proc)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        return proc.wait()
    finally:
        stop_group(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_supernode(config, config_path: Path, node_url: str, log_file=None) -> list[subprocess.Popen]:
    """Start this node's FAB-checking executor, which starts the SuperNode (process isolation) as its child."""
    from workbench.channels.fl.supernode_key import ensure_key

    fl = config.fl
    state = config.node.state_dir / "flower"
    state.mkdir(parents=True, exist_ok=True)
    key_file = ensure_key(config.node.state_dir)
    runtime_port = fl.clientappio_port or _free_port()
    node_config = (f"workbench-node='{config.node.name}' workbench-url='{node_url}' "
                   f"workbench-key-file='{key_file}'")
    cmd = [_bin("flower-supernode"), "--superlink", fl.superlink, "--isolation", "process",
           "--host", "127.0.0.1", "--port", str(runtime_port), "--node-config", node_config]
    if fl.root_certificates:
        cmd += ["--root-certificates", str(fl.root_certificates)]
    else:
        cmd.append("--insecure")
    if fl.auth_private_key:
        cmd += ["--auth-supernode-private-key", str(fl.auth_private_key)]
        if fl.auth_public_key:
            cmd += ["--auth-supernode-public-key", str(fl.auth_public_key)]
    env = flower_env_vars(state / "flwr")
    out = log_file or subprocess.DEVNULL
    # One new session for the executor, which starts the SuperNode as its child: stopping the group stops the
    # SuperNode, the executor and every ClientApp process they started.
    executor = subprocess.Popen([sys.executable, "-m", "workbench.channels.fl.executor", "--config", str(config_path),
                                 "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                                 "--parent-pid", str(os.getpid()), "--supernode", json.dumps(cmd)],
                                env=env, start_new_session=True, cwd=state, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    return [executor]


def start_node_supernode(config, config_path: Path, host: str, port: int) -> Callable[[], None]:
    """The ``node serve`` hook: start this node's SuperNode; returns the function that stops it."""
    local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    log_path = config.node.state_dir / "flower" / "supernode.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = open(log_path, "ab")  # noqa: SIM115 - closed by the stopper
    procs = start_supernode(config, Path(config_path).resolve(), f"http://{local}:{port}", log_file=log_file)
    log.warning("SuperNode for %s connecting to %s (log: %s)", config.node.name, config.fl.superlink, log_path)

    def stop() -> None:
        stop_group(procs[0], timeout=5)
        for proc in procs[1:]:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=5)
        log_file.close()

    return stop


# ---------------------------------------------------------------- the analyst's side


def run_deployment_job(superlink: str, job_ids: dict[str, str], config: dict, sink: Callable[[dict], None],
                       timeout_s: float = 3600.0, insecure: bool = True,
                       root_certificates: str | None = None) -> None:
    """Submit the built-in app to ``superlink`` (its Control API, host:port) and relay the rounds to ``sink``."""
    from workbench.channels.fl.apps import write_app_dir

    root = Path(tempfile.mkdtemp(prefix="wbflrun"))
    try:
        home = root / "flwr"
        home.mkdir()
        conn = [f'[superlink]\ndefault = "workbench"\n\n[superlink.workbench]\naddress = "{superlink}"']
        if root_certificates:
            conn.append(f'root-certificates = "{root_certificates}"')
        else:
            conn.append(f"insecure = {'true' if insecure else 'false'}")
        (home / "config.toml").write_text("\n".join(conn) + "\n")
        app = write_app_dir(root / "app")
        run_config = root / "run_config.toml"
        run_config.write_text(f"job-ids = {json.dumps(json.dumps(job_ids))}\n"
                              f"job-config = {json.dumps(json.dumps(config))}\n")
        proc = subprocess.Popen([_bin("flwr"), "run", str(app), "workbench", "--run-config", str(run_config),
                                 "--stream"], env=flower_env_vars(home), start_new_session=True, cwd=root,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        finished, tail = False, []
        deadline = time.monotonic() + timeout_s
        try:
            for line in proc.stdout:
                tail = (tail + [line.rstrip()])[-20:]
                at = line.find(EVENT_PREFIX)
                if at >= 0:
                    event = json.loads(line[at + len(EVENT_PREFIX):])
                    sink(event)
                    if event.get("type") in ("done", "error"):
                        finished = True
                        break
                if time.monotonic() > deadline:
                    break
        finally:
            stop_group(proc)
        if not finished:
            raise ComputationFailed("The deployment run ended without a result: " + " | ".join(tail[-5:])[:800],
                                    code="computation_failed")
    finally:
        shutil.rmtree(root, ignore_errors=True)
