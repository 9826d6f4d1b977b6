"""The aggregating side of a Workbench training job (one code path for both engines).

Flower's legacy workflow (``DefaultWorkflow``; ``SecAggPlusWorkflow`` for
secure aggregation) with a FedAvg that weights nodes by their DP-noised row
counts and reports every round to a *sink*: an in-process callback under the
simulation engine, JSON lines on stdout (streamed by ``flwr run --stream``)
under the deployment engine.

What the aggregator sees: each node's noisy update (or, with SecAgg+, only
their weighted sum), each node's noisy metrics and noisy count. Nothing here
touches private rows.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Callable

import numpy as np

__all__ = ["EVENT_PREFIX", "JobConfig", "run_server", "stdout_sink"]

EVENT_PREFIX = "[workbench-fl] "
Sink = Callable[[dict], None]


class JobConfig(dict):
    """Plain settings of one job: rounds, nodes, secure_aggregation, shapes, initial, weight_bound, max_weight."""


def _failure_details(failures) -> dict:
    """The stable error code a node sent back (the forwarder encodes it as JSON in the error text)."""
    for failure in failures:
        text = str(failure if isinstance(failure, BaseException) else getattr(failure[1], "status", failure))
        match = re.search(r"workbench-error (\{.*\})", text)
        if match:
            try:
                return json.loads(match.group(1))
            except ValueError:
                pass
    return {"code": "computation_failed", "message": f"{len(failures)} node(s) failed this round."}


class _Stop(Exception):
    def __init__(self, details: dict):
        super().__init__(details.get("message", "stopped"))
        self.details = details


def _strategy(config: dict, sink: Sink):
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAvg

    nodes = int(config["nodes"])
    if config.get("initial") is not None:  # a public, data-independent start (the MLP's seeded weights)
        initial = [np.asarray(w, dtype=float).reshape(tuple(s)) for w, s in zip(config["initial"], config["shapes"])]
    else:
        initial = [np.zeros(tuple(s)) for s in config["shapes"]]

    class WorkbenchFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise _Stop(_failure_details(failures))
            aggregated, _ = super().aggregate_fit(server_round, results, [])
            if aggregated is None:
                raise _Stop({"code": "computation_failed", "message": "No node answered this round."})
            weights = parameters_to_ndarrays(aggregated)
            per_node = []
            for _, fitres in results:
                m = dict(fitres.metrics)
                m["count"] = int(fitres.num_examples)
                per_node.append(m)
            per_node.sort(key=lambda m: str(m.get("node", "")))
            sink({"type": "round", "round": server_round, "weights": [w.tolist() for w in weights],
                  "nodes": per_node})
            return aggregated, {}

    return WorkbenchFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=nodes, min_evaluate_clients=0,
                           min_available_clients=nodes, accept_failures=False,
                           initial_parameters=ndarrays_to_parameters(initial))


def run_server(grid, context, config: dict, sink: Sink) -> None:
    """Run the job's rounds on ``grid``; every outcome (round, error, done) goes to ``sink``."""
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    rounds = int(config["rounds"])
    nodes = int(config["nodes"])
    reported: list[int] = []

    def counting_sink(event: dict) -> None:
        if event.get("type") == "round":
            reported.append(event["round"])
        sink(event)

    strategy = _strategy(config, counting_sink)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    fit_workflow = None
    if config.get("secure_aggregation"):
        fit_workflow = SecAggPlusWorkflow(num_shares=nodes, reconstruction_threshold=nodes // 2 + 1,
                                          max_weight=float(config["max_weight"]),
                                          clipping_range=float(config["weight_bound"]),
                                          timeout=float(config.get("timeout", 600)))
    try:
        DefaultWorkflow(fit_workflow=fit_workflow)(grid, legacy)
    except _Stop as stop:
        sink({"type": "error", **stop.details})
        return
    except Exception as exc:  # noqa: BLE001 - reported to the analyst, then the job ends
        sink({"type": "error", "code": "computation_failed", "message": f"The aggregation failed: {exc!r}"[:500]})
        return
    if len(reported) < rounds:
        sink({"type": "error", "code": "computation_failed",
              "message": f"Only {len(reported)} of {rounds} rounds completed (a node dropped out or refused)."})
        return
    sink({"type": "done"})


def stdout_sink(event: dict) -> None:
    """Deployment engine: one JSON line per event on stdout, relayed to the analyst by ``flwr run --stream``."""
    sys.stdout.write(EVENT_PREFIX + json.dumps(event) + "\n")
    sys.stdout.flush()
