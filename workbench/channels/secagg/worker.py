"""The node's half of HE aggregation, run in a worker process: exact aggregate, noise share, clamp.

Privacy guarantee: for one op, the node computes per-slot integer sums over
its rows (values clipped to public bounds, nulls imputed to the bounds' middle,
each row rounded to the plan's fixed point), so one person changes slot ``j``
by at most ``sensitivity[j]``. It then adds noise:

* ``conservative``: a discrete Laplace of scale ``noise_scale[j]`` per slot
  (OpenDP's exact sampler), so this node's contribution alone is
  epsilon-DP (epsilon split evenly over the slots), whatever the others do.
* ``distributed``: a share ``P1 - P2`` with ``P1, P2 ~ Polya(1/k, exp(-1/b))``
  (negative binomial with shape ``1/k``); the sum of the ``k`` parties' shares
  is exactly discrete Laplace of scale ``b``, so the *total* is epsilon-DP when
  all ``k`` parties add their share. One share alone is not DP: it relies on
  the aggregator never revealing a partial and on the other parties being
  honest (see docs/federation.md).

The noisy vector is clamped to the public per-node maximum (a share beyond 60
noise scales happens with probability below e^-60), so totals cannot wrap.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

import polars as pl

from workbench.node.data import scan_task
from workbench.protocol import DatasetInfo
from workbench.channels.secagg.wire import EncodingPlan, HEOp


def _clipped(info: DatasetInfo, name: str) -> pl.Expr:
    col = info.column(name)
    lo, hi = (0.0, 1.0) if col.type == "bool" else col.bounds
    mid = (lo + hi) / 2.0
    expr = pl.col(name).cast(pl.Float64)
    return expr.fill_nan(mid).fill_null(mid).clip(lo, hi)


def exact_sums(info: DatasetInfo, op: HEOp, plan: EncodingPlan, lf: pl.LazyFrame) -> list[int]:
    """Per-slot integer sums over this node's rows (no noise)."""
    exprs: list[pl.Expr] = []
    if op.kind == "sum":
        for name, d in zip(op.columns, plan.decimals):
            exprs.append((_clipped(info, name) * 10 ** d).round(0).cast(pl.Int64).sum())
        if op.count:
            exprs.append(pl.len().cast(pl.Int64))
    elif op.kind == "evaluate":
        from workbench.channels.secagg.wire import eval_monomials

        names = [op.y] + list(op.x)
        z = {n: (_clipped(info, n) - c) / h for n, c, h in zip(names, plan.centres, plan.halves)}
        one = z[op.y] * 0.0 + 1.0
        variables = [one] + [z[n] for n in op.x] + [z[op.y]]
        for exps, d in zip(eval_monomials(op), plan.decimals):
            term = one
            for var, e in zip(variables, exps):
                for _ in range(e):
                    term = term * var
            exprs.append((term.clip(-1.0, 1.0) * 10 ** d).round(0).cast(pl.Int64).sum())
    else:
        names = [op.y] + list(op.x)
        z = {n: (_clipped(info, n) - c) / h for n, c, h in zip(names, plan.centres, plan.halves)}
        one = z[op.y] * 0.0 + 1.0  # a per-row 1 (a bare literal would sum to 1, not to the row count)
        regressors = [one] + [z[n] for n in op.x]
        terms = [regressors[i] * regressors[j] for i in range(len(regressors)) for j in range(i, len(regressors))]
        terms += [r * z[op.y] for r in regressors] + [z[op.y] * z[op.y]]
        for term, d in zip(terms, plan.decimals):
            exprs.append((term.clip(-1.0, 1.0) * 10 ** d).round(0).cast(pl.Int64).sum())
    row = lf.select([e.alias(f"s{i}") for i, e in enumerate(exprs)]).collect().row(0)
    return [int(v or 0) for v in row]


def _conservative(value: int, scale: float) -> int:
    import opendp.prelude as dp

    dp.enable_features("contrib")
    m = dp.m.make_laplace(dp.atom_domain(T="i64"), dp.absolute_distance(T="i64"), scale=float(scale))
    return int(m(int(value)))


def _distributed_share(scale: float, parties: int, rng) -> int:
    q = math.exp(-1.0 / scale)
    return int(rng.negative_binomial(1.0 / parties, 1.0 - q)) - int(rng.negative_binomial(1.0 / parties, 1.0 - q))


def add_noise(values: list[int], plan: EncodingPlan) -> list[int]:
    """The node's noisy, clamped contribution (see the module's privacy guarantee)."""
    import numpy as np

    rng = np.random.default_rng(secrets.randbits(128))
    out = []
    for v, b, cap in zip(values, plan.noise_scale, plan.max_abs_per_node):
        if plan.mode == "conservative":
            noisy = _conservative(v, b)
        else:
            noisy = v + _distributed_share(b, plan.parties, rng)
        out.append(max(-cap, min(cap, noisy)))
    return out


def noisy_contribution(task: dict[str, Any]) -> dict:
    """Worker: the node's noisy integer vector for ``task`` (built by the node from public metadata)."""
    op = HEOp.model_validate(task["op"])
    plan = EncodingPlan.model_validate(task["plan"])
    info, lf = scan_task(task)
    values = exact_sums(info, op, plan, lf)
    return {"values": add_noise(values, plan)}
