"""Prometheus series of the federated-learning channel: its SuperNode and its training jobs on this node.

Registered with :func:`workbench.node.metrics.register_collector` by :func:`install` when the node's
app is assembled (:mod:`workbench.server`). Nothing here comes from the rows: job states, rounds and the epsilon charged.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric


def _supernodes_alive() -> int:
    alive = 0
    try:
        for child in psutil.Process().children(recursive=True):
            try:
                if any("flower-supernode" in part for part in child.cmdline()[:3]):
                    alive += 1
            except psutil.Error:
                pass
    except psutil.Error:
        pass
    return alive


def fl_families(service) -> Iterable[Metric]:
    """SuperNode configuration and liveness, and the node's training jobs by dataset and status."""
    configured = int(getattr(getattr(service.config, "fl", None), "superlink", None) is not None)
    yield GaugeMetricFamily("workbench_fl_supernode_configured", "1 if this node joins a Flower SuperLink.",
                            value=configured)
    yield GaugeMetricFamily("workbench_fl_supernode_processes",
                            "flower-supernode processes started by this node and alive.",
                            value=_supernodes_alive() if configured else 0)
    registry = service.state_of("fl")  # never create one just to be scraped
    jobs = registry.jobs() if registry is not None else []
    by_state: dict[tuple[str, str], int] = defaultdict(int)
    rounds: dict[str, int] = defaultdict(int)
    spent: dict[str, float] = defaultdict(float)
    for job in jobs:
        by_state[(job.dataset, job.status)] += 1
        rounds[job.dataset] += job.releases
        spent[job.dataset] += job.epsilon_spent
    family = GaugeMetricFamily("workbench_fl_jobs", "Training jobs held by this node, by dataset and status.",
                               labels=["dataset", "status"])
    for (dataset, status), n in sorted(by_state.items()):
        family.add_metric([dataset, status], n)
    yield family
    family = GaugeMetricFamily("workbench_fl_rounds_done", "Rounds this node has trained for its current jobs.",
                               labels=["dataset"])
    for dataset, n in sorted(rounds.items()):
        family.add_metric([dataset], n)
    yield family
    family = GaugeMetricFamily("workbench_fl_epsilon_spent", "Epsilon charged by this node's current training jobs.",
                               labels=["dataset"])
    for dataset, value in sorted(spent.items()):
        family.add_metric([dataset], value)
    yield family


def install(_app, _service) -> None:
    """Add the FL series to every scrape of this process's nodes."""
    from workbench.node.metrics import register_collector

    register_collector(fl_families)
