"""The worker task registry: every computation a worker process may run, by name.

A call site names its task (``service.pool.run("dp.release", payload)``); this
table says where that task's code is, so a reader jumps from the call to the
function. A worker runs only the names listed here: the node never runs a
module or function it was sent. Targets are ``module:function`` strings, imported
in the worker process only (the node never loads OpenDP, TenSEAL or JAX itself).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["TASKS", "resolve"]

#: Task name -> ``module:function`` that runs it in a worker process.
TASKS: dict[str, str] = {
    "dp.query": "workbench.channels.dp.worker:run",
    "dp.pushdown": "workbench.channels.dp.pushdown.run:run",  # tables in PostgreSQL or Spark
    "dp.copy": "workbench.channels.dp.columnar:ensure",  # a file's columnar copy, before a release is charged
    "synth.fit": "workbench.channels.synth.worker:run",
    "synth.sdv_fit": "workbench.channels.synth.sdv_real:run",
    "secagg.contribution": "workbench.channels.secagg.worker:noisy_contribution",
    "secagg.check_context": "workbench.channels.secagg.he_params:check_context",
    "secagg.check_ciphertext": "workbench.channels.secagg.he_params:check_ciphertext",
    "secagg.encrypt": "workbench.channels.secagg.he_params:encrypt",
    "secagg.add": "workbench.channels.secagg.he_params:add",
    "secagg.check_weights": "workbench.channels.secagg.he_evaluate:check_weights",
    "secagg.evaluate": "workbench.channels.secagg.he_evaluate:node_evaluate",
    "fl.local_round": "workbench.channels.fl.worker:local_round",
    "node.open_rows": "workbench.node.open_rows:read",  # open data's rows, encoded off the node process
}


def target_of(name: str) -> str:
    """The ``module:function`` of a registered task (``ValueError`` for any other name)."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"refusing to run {name!r}: not a registered worker task") from None


def resolve(name: str) -> Callable[[Any], Any]:
    """The function of a registered task (imports its module: call it in the worker process)."""
    module_name, func_name = target_of(name).rsplit(":", 1)
    return getattr(importlib.import_module(module_name), func_name)
