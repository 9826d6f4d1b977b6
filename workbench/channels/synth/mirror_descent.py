"""mbi's mirror descent (the estimator of every dp.mbi fit) in NumPy, for identity measurements.

``mbi.estimation.mirror_descent`` JIT-compiles its update step with JAX: ~6 s of CPU per fit on a fresh
worker, several times the ~1.5 s the 1000 iterations take, and every model shape compiles anew. This module
runs the same algorithm -- same L2 loss ``sum_M ||P_M mu - y_M||^2 / (2 sigma_M^2)``, same start (step size
``2 / (L * total)``), same Armijo line search (x1.01 on sufficient decrease, x0.5 otherwise), same number of
iterations -- with exact marginals from sum-product message passing on the junction tree in NumPy, so
nothing is compiled.

It reads the DP measurements only (post-processing) and returns an ordinary ``mbi.MarkovRandomField``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import numpy as np

Clique = tuple[str, ...]


@functools.lru_cache(maxsize=4096)
def _align_plan(attrs: Clique, target: Clique) -> tuple[tuple[int, ...] | None, tuple[str | None, ...]]:
    order = tuple(attrs.index(a) for a in target if a in attrs)
    return (None if order == tuple(range(len(order))) else order), tuple(a if a in attrs else None for a in target)


def _align(values: np.ndarray, attrs: Clique, target: Clique) -> np.ndarray:
    """``values`` over ``attrs`` reordered and reshaped to broadcast over ``target`` (attrs ⊆ target)."""
    order, slots = _align_plan(attrs, target)
    moved = values if order is None else np.transpose(values, order)
    sizes = iter(moved.shape)
    return moved.reshape([next(sizes) if a is not None else 1 for a in slots])


@functools.lru_cache(maxsize=4096)
def _sum_plan(attrs: Clique, keep: Clique) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    drop = tuple(i for i, a in enumerate(attrs) if a not in keep)
    rest = tuple(a for a in attrs if a in keep)
    perm = tuple(rest.index(a) for a in keep)
    return drop, (None if perm == tuple(range(len(perm))) else perm)


def _sum_to(values: np.ndarray, attrs: Clique, keep: Clique) -> np.ndarray:
    """Sum ``values`` (over ``attrs``) down to ``keep``, axes in ``keep``'s order."""
    drop, perm = _sum_plan(attrs, keep)
    summed = values.sum(axis=drop) if drop else values
    return summed if perm is None else np.transpose(summed, perm)


class JunctionTree:
    """Exact marginals of ``exp(sum of log-potentials)`` on the potentials' cliques, scaled to ``total``."""

    def __init__(self, domain: Any, cliques: list[Clique]):
        import networkx as nx
        from mbi import junction_tree

        self.domain = domain
        self.cliques = cliques
        tree, _ = junction_tree.make_junction_tree(domain, cliques)
        self.nodes: list[Clique] = [tuple(n) for n in tree.nodes]
        self.home = {c: next(n for n in self.nodes if set(c) <= set(n)) for c in cliques}
        self.order = []   # (parent, child) pairs, root first, for every connected part of the tree (a forest)
        for part in nx.connected_components(tree):
            self.order += list(nx.bfs_edges(tree, next(iter(part))))
        self.neighbours = {n: [tuple(m) for m in tree.neighbors(n)] for n in self.nodes}
        self.shapes = {n: tuple(domain.project(n).shape) for n in self.nodes}

    def marginals(self, theta: dict[Clique, np.ndarray], total: float) -> dict[Clique, np.ndarray]:
        node_log = {n: np.zeros(self.shapes[n]) for n in self.nodes}
        for c, values in theta.items():
            node_log[self.home[c]] = node_log[self.home[c]] + _align(values, c, self.home[c])
        factor = {n: np.exp(v - v.max()) for n, v in node_log.items()}
        messages: dict[tuple[Clique, Clique], np.ndarray] = {}

        def send(src: Clique, dst: Clique) -> None:
            belief = factor[src]
            for other in self.neighbours[src]:
                if other != dst:
                    belief = belief * messages[(other, src)]
            sep = tuple(a for a in src if a in dst)
            msg = _sum_to(belief, src, sep)
            msg = msg / max(float(msg.max()), 1e-300)
            messages[(src, dst)] = _align(msg, sep, dst)

        for parent, child in reversed(self.order):   # leaves to root
            send(child, parent)
        for parent, child in self.order:             # root to leaves
            send(parent, child)
        out = {}
        for c in self.cliques:
            n = self.home[c]
            belief = factor[n]
            for other in self.neighbours[n]:
                belief = belief * messages[(other, n)]
            marginal = _sum_to(belief, n, c)
            out[c] = marginal * (total / marginal.sum())
        return out


class L2Loss:
    """mbi's L2 loss of identity measurements and its gradient, each measurement on its first maximal clique."""

    def __init__(self, measurements: list, cliques: list[Clique]):
        self.terms = []
        for m in measurements:
            clique = tuple(m.clique)
            parent = next(c for c in cliques if set(clique) <= set(c))
            precision = 1.0 / max(float(m.stddev), 1e-12) ** 2
            self.terms.append((parent, clique, np.asarray(m.noisy_measurement, dtype=np.float64), precision))

    def value_and_grad(self, mu: dict[Clique, np.ndarray]) -> tuple[float, dict[Clique, np.ndarray]]:
        loss = 0.0
        grad = {c: np.zeros_like(v) for c, v in mu.items()}
        for parent, clique, y, precision in self.terms:
            projected = _sum_to(mu[parent], parent, clique)
            diff = projected.reshape(-1) - y
            loss += 0.5 * precision * float(diff @ diff)
            grad[parent] = grad[parent] + _align((precision * diff).reshape(projected.shape), clique, parent)
        return loss, grad

    def value(self, mu: dict[Clique, np.ndarray]) -> float:
        total = 0.0
        for parent, clique, y, precision in self.terms:
            diff = _sum_to(mu[parent], parent, clique).reshape(-1) - y
            total += 0.5 * precision * float(diff @ diff)
        return total


def _start(domain: Any, cliques: list[Clique], potentials: Any) -> dict[Clique, np.ndarray]:
    """The warm start: each given potential added to the first loss clique containing it (zeros otherwise)."""
    theta = {c: np.zeros(domain.project(c).shape) for c in cliques}
    if potentials is None:
        return theta
    for c, factor in potentials.arrays.items():
        c = tuple(c)
        home = next((k for k in cliques if set(c) <= set(k)), None)
        if home is not None:
            theta[home] = theta[home] + _align(np.asarray(factor.values, dtype=np.float64), c, home)
    return theta


def mirror_descent(domain: Any, measurements: list, known_total: float, lipschitz: float, *,
                   potentials: Any = None, iters: int = 1000,
                   callback: Callable[[int], None] = lambda _i: None) -> Any:
    """Fit an ``mbi.MarkovRandomField`` to identity measurements (mbi's algorithm, see the module doc)."""
    from mbi import CliqueVector, Factor, MarkovRandomField
    from mbi.clique_utils import maximal_subset

    cliques = [tuple(c) for c in maximal_subset([tuple(m.clique) for m in measurements])]
    tree = JunctionTree(domain, cliques)
    loss_fn = L2Loss(measurements, cliques)
    theta = _start(domain, cliques, potentials)
    alpha = 2.0 / (lipschitz * known_total)
    mu = tree.marginals(theta, known_total)
    loss, grad = loss_fn.value_and_grad(mu)
    for i in range(iters):
        candidate = {c: theta[c] - alpha * grad[c] for c in cliques}
        mu2 = tree.marginals(candidate, known_total)
        loss2 = loss_fn.value(mu2)
        decrease = 0.5 * alpha * sum(float(np.vdot(grad[c], mu[c] - mu2[c])) for c in cliques)
        if loss - loss2 >= decrease:
            theta, mu, alpha = candidate, mu2, alpha * 1.01
            loss, grad = loss_fn.value_and_grad(mu)
        else:
            alpha *= 0.5
        callback(i)

    def vector(arrays: dict[Clique, np.ndarray]) -> Any:
        return CliqueVector(domain, cliques, {c: Factor(domain.project(c), arrays[c]) for c in cliques})

    return MarkovRandomField(potentials=vector(theta), marginals=vector(mu), total=known_total)
