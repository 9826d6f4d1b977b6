"""Federated learning's Prometheus lines (registered with :func:`workbench.node.metrics.register_collector`)."""

from __future__ import annotations

from collections import defaultdict

__all__ = ["fl_lines", "install"]


def _labels(**labels: object) -> str:
    escaped = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") for v in labels.values())
    return "{" + ",".join(f'{k}="{v}"' for k, v in zip(labels, escaped)) + "}"


def fl_lines(service) -> list[str]:
    """Federated learning on this node: its SuperNode (deployment engine) and its training jobs."""
    fl = getattr(service.config, "fl", None)
    configured = int(getattr(fl, "superlink", None) is not None)
    alive = 0
    if configured:
        import psutil

        try:
            for child in psutil.Process().children(recursive=True):
                try:
                    if any("flower-supernode" in part for part in child.cmdline()[:3]):
                        alive += 1
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    out = ["# HELP workbench_fl_supernode_configured 1 if this node joins a Flower SuperLink.",
           "# TYPE workbench_fl_supernode_configured gauge", f"workbench_fl_supernode_configured {configured}",
           "# HELP workbench_fl_supernode_processes flower-supernode processes started by this node and alive.",
           "# TYPE workbench_fl_supernode_processes gauge", f"workbench_fl_supernode_processes {alive}"]
    registry = service.state_of("fl")  # never create one just to be scraped
    jobs = registry.jobs() if registry is not None else []
    by_state: dict[tuple[str, str], int] = defaultdict(int)
    rounds: dict[str, int] = defaultdict(int)
    spent: dict[str, float] = defaultdict(float)
    for job in jobs:
        by_state[(job.dataset, job.status)] += 1
        rounds[job.dataset] += job.releases
        spent[job.dataset] += job.epsilon_spent
    out += ["# HELP workbench_fl_jobs Training jobs held by this node, by dataset and status.",
            "# TYPE workbench_fl_jobs gauge"]
    out += [f"workbench_fl_jobs{_labels(dataset=d, status=st)} {n}" for (d, st), n in sorted(by_state.items())]
    out += ["# HELP workbench_fl_rounds_done Rounds this node has trained for its current jobs.",
            "# TYPE workbench_fl_rounds_done gauge"]
    out += [f"workbench_fl_rounds_done{_labels(dataset=d)} {n}" for d, n in sorted(rounds.items())]
    out += ["# HELP workbench_fl_epsilon_spent Epsilon charged by this node's current training jobs.",
            "# TYPE workbench_fl_epsilon_spent gauge"]
    out += [f"workbench_fl_epsilon_spent{_labels(dataset=d)} {repr(float(v))}" for d, v in sorted(spent.items())]
    return out


def install(_app, _service) -> None:
    """Add the FL lines to every scrape of this process's nodes."""
    from ..node.metrics import register_collector

    register_collector(fl_lines)
