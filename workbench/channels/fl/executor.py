"""A node's Flower SuperExec that launches a ClientApp only for Flower apps the owner allowed.

``flower-supernode --isolation process`` leaves launching ClientApps to an
external executor. This is Flower's own ``run_superexec`` loop with one
guard: before a task starts, its FAB sha256 must be the built-in Workbench
app's or listed in ``[fl] allowed_fabs``; any other is refused (audit record
``refusal`` with code ``fl_fab_not_allowed``) and never executed.
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("workbench.channels.fl.executor")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench.channels.fl.executor")
    parser.add_argument("--config", required=True)
    parser.add_argument("--runtime-api-address", required=True)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--supernode", default=None, help="JSON command line of the SuperNode to start as a child")
    args = parser.parse_args(argv)
    if args.supernode:
        import atexit
        import json
        import subprocess

        child = subprocess.Popen(json.loads(args.supernode), stdin=subprocess.DEVNULL)  # same session and group
        atexit.register(child.kill)
    if args.parent_pid:
        _watch_parent(args.parent_pid)

    from flwr.supercore.superexec import run_superexec as flower
    from flwr.supercore.superexec.executor import LaunchResult

    from workbench.errors import NotAuthorized
    from workbench.node.settings import NodeConfig
    from workbench.channels.fl.apps import check_fab

    config = NodeConfig.load(args.config)
    original = flower.AutoExecPlugin.launch_task

    def guarded_launch(self, token, task):
        try:
            check_fab(config, task.fab_hash)
        except NotAuthorized as exc:
            log.error("refused Flower app %s: %s", task.fab_hash, exc.message)
            _audit_refusal(config, task.fab_hash, task.run_id)
            return LaunchResult.failed(exc.message)
        return original(self, token, task)

    flower.AutoExecPlugin.launch_task = guarded_launch
    flower.run_superexec(runtime_api_address=args.runtime_api_address, insecure=True, parent_pid=args.parent_pid,
                         runtime_dependency_install=False)


def _watch_parent(pid: int) -> None:
    """When the node process is gone (even SIGKILLed), take this whole process group down with it."""
    import os
    import signal
    import threading
    import time

    def watch() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os.killpg(0, signal.SIGKILL)
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _audit_refusal(config, fab_hash: str, run_id: int) -> None:
    from workbench.node import audit
    from workbench.node.store import Store

    store = Store(config.database_url)
    try:
        with store.transaction() as session:
            audit.append(session, "supernode", "refusal", config.fl.dataset, code="fl_fab_not_allowed",
                         fab_sha256=fab_hash, flower_run_id=int(run_id))
    finally:
        store.dispose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
