"""Correlation, covariance and linear regression over a federation, from pooled noisy moments.

The analysis is the single-node one (:mod:`workbench.client.analyses`): noisy
``n``, sums of standardised columns ``z = (x - c) / h`` and sums of their
products, post-processed into estimates, standard errors that include the DP
noise, and 95% intervals. Only where the pooled moments come from differs:

* **per node** (the default): every node answers the same ``moments`` spec (with
  the handle's filter and derived columns) through its own gate; the pooled
  moments are the sum of the nodes' noisy moments, and their noise is the sum of
  the nodes' independent Laplace noises (the bootstrap redraws each one). Every
  node standardises with its public bounds, so these must agree
  (``bounds_mismatch`` otherwise, before anything is asked).
* **secure aggregation** (``protocol="he"`` or ``"smpc"``): one session of the
  secure-aggregation channel (:mod:`workbench.channels.secagg`) computes the same
  sums of standardised products (its ``linreg`` op packs ``n``, every sum and
  every product of ``(x..., y)``) under encryption or secret sharing; the analyst
  sees only the noisy totals. In ``distributed`` mode the total carries ONE
  Laplace draw per moment instead of one per node.

Privacy guarantee: per node, (epsilon, delta)-DP on that node's data (each
node's own OpenDP release, or its secure-aggregation contribution, charged by
its gate); the pooling and the analysis are post-processing. As for every
federated query, a person present at several nodes adds up their loss there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from workbench.channels.dp.federated import FederatedQuery
from workbench.client.analyses import NoisyMoments, analysis_table, moment_names
from workbench.client.federation import FederatedDataset
from workbench.client.results import as_released
from workbench.errors import InvalidQuery
from workbench.protocol import DPQuery

PROTOCOLS = ("he", "smpc")


class FederatedMoments(FederatedQuery):
    """A correlation, covariance or regression over every node: ``.preview(epsilon)``, ``.release(epsilon)``."""

    def __init__(self, fds: FederatedDataset, spec: DPQuery, analysis: str, y: str | None = None,
                 x: list[str] | None = None):
        super().__init__(fds, spec)
        self.analysis, self.y, self.x = analysis, y, x

    def release(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False, protocol: str | None = None,
                mode: str = "distributed", aggregator: str | None = None) -> pd.DataFrame:
        """Release the pooled moments and compute the analysis from them (see the module docstring).

        ``protocol=None``: each node releases its own DP moments (filters and derived columns allowed).
        ``protocol="he"`` / ``"smpc"``: one secure-aggregation session (whole datasets, an aggregator every
        node trusts, pure DP); ``mode`` and ``aggregator`` as for ``secure_sum``.

        Privacy guarantee: (epsilon, delta)-DP per node, charged by each node's gate; the rest is
        post-processing.
        """
        if protocol is None:
            return super().release(epsilon, delta, allow_partial=allow_partial)
        return self._secure(epsilon, delta, protocol, mode, aggregator)

    def preview(self, epsilon: float, delta: float = 0.0, *, allow_partial: bool = False,
                protocol: str | None = None, mode: str = "distributed", aggregator: str | None = None):
        """The price on every node and the expected 95% error of each pooled moment. Spends nothing.

        With ``protocol``: every node's secure-aggregation preview (price, budget) and the noise of each
        summed moment from the public encoding plan."""
        if protocol is None:
            return super().preview(epsilon, delta, allow_partial=allow_partial)
        from workbench.channels.dp.federated import FederatedPreview
        from workbench.channels.secagg.session import preflight
        from workbench.channels.secagg.wire import noise_half_width

        op = self._secure_op(delta, protocol)
        handles, plan, url = preflight(self.fds, op, epsilon, mode, aggregator, protocol=protocol)
        half = [a / 10 ** d for a, d in zip(noise_half_width(plan, 0.05), plan.decimals)]
        nodes = pd.DataFrame({"node": [h.node.url for h in handles], "aggregator": url, "epsilon": epsilon})
        accuracy = pd.DataFrame({"statistic": plan.slots, "accuracy": half, "alpha": 0.05})
        return FederatedPreview(epsilon, 0.0, nodes, accuracy, [])

    def _secure_op(self, delta: float, protocol: str):
        """The secure-aggregation op giving these moments (``linreg`` of the last column on the others)."""
        from workbench.channels.secagg.wire import HEOp

        if protocol not in PROTOCOLS:
            raise InvalidQuery("protocol is None (each node's DP moments), 'he' or 'smpc'.", code="invalid_query")
        if delta:
            raise InvalidQuery("Secure aggregation releases under pure DP: leave delta at 0.", code="invalid_query")
        columns = list(self.spec.columns)
        if len(columns) < 2:
            raise InvalidQuery("Secure aggregation of moments needs at least two columns.", code="invalid_query")
        self.fds._whole(f"{self.analysis} with protocol={protocol!r}")
        return HEOp(kind="linreg", y=columns[-1], x=columns[:-1])

    def _combine(self, frames: list) -> pd.DataFrame:
        moments = NoisyMoments.pooled([f for _h, _p, f in frames], list(self.spec.columns),
                                   [h.node.url for h, _p, _f in frames])
        out = analysis_table(moments, self.analysis, self.y, self.x)
        pooled = [{"moment": m, "estimate": float(v)} for m, v in zip(moments.names, moments.values)]
        out.attrs.update({"analysis": self.analysis, "source": "per-node DP moments", "moments": pooled})
        return out

    def _secure(self, epsilon: float, delta: float, protocol: str, mode: str, aggregator: str | None) -> pd.DataFrame:
        """The pooled moments from one secure-aggregation session (its ``linreg`` op over the same columns)."""
        from workbench.channels.secagg.kernel import secure_aggregate

        op = self._secure_op(delta, protocol)
        agg = secure_aggregate(self.fds, op, epsilon, mode=mode, aggregator=aggregator, protocol=protocol)
        moments = secure_moments(agg.plan, agg.values(), list(op.x), op.y)
        out = analysis_table(moments, self.analysis, self.y, self.x)
        out.attrs.update(agg.attrs())
        out.attrs.update({"dataset": self.fds.name, "kind": "moments", "analysis": self.analysis,
                          "source": f"secure aggregation ({protocol}, {mode})", "delta": 0.0,
                          "query": self.spec.model_dump(mode="json", exclude_none=True)})
        return as_released(out)


def secure_moments(plan, values: np.ndarray, x: list[str], y: str) -> NoisyMoments:
    """The moments of ``[*x, y]`` from a secure ``linreg`` total (slots ``xx[..]``, ``xy[..]``, ``yy[..]``, in
    standardised units; plan centres and halves are y first). Noise: one Laplace per slot at the plan's
    public scale in ``distributed`` mode, one per node in ``conservative`` mode."""
    index = {name: i for i, name in enumerate(plan.slots)}

    def slot(a: str | None, b: str | None) -> int:
        a, b = a or "1", b or "1"
        if a == y and b == y:
            return index[f"yy[{y}]"]
        if y in (a, b):
            return index[f"xy[{b if a == y else a}]"]
        return index.get(f"xx[{a},{b}]", index.get(f"xx[{b},{a}]"))

    columns = [*x, y]
    pairs = [(None, None)] + [(a, None) for a in columns] + [(a, b) for i, a in enumerate(columns)
                                                             for b in columns[i:]]
    order = [slot(a, b) for a, b in pairs]
    assert len(order) == len(moment_names(columns))
    scales = np.array(plan.noise_scale, dtype=float) / 10.0 ** np.array(plan.decimals, dtype=float)
    copies = 1 if plan.mode == "distributed" else plan.parties
    centre = [*plan.centres[1:], plan.centres[0]]
    half = [*plan.halves[1:], plan.halves[0]]
    return NoisyMoments(columns, centre, half, np.asarray(values, dtype=float)[order], [scales[order]] * copies)


def check_same_bounds(fds: FederatedDataset, spec: DPQuery) -> None:
    """Refuse (``bounds_mismatch``, before any request) moments whose columns' public bounds differ by node."""
    from workbench.query.language import derived_schema

    first = derived_schema(fds.handles[0].schema, spec)[0]
    for h in fds.handles[1:]:
        info = derived_schema(h.schema, spec)[0]
        differ = [c for c in spec.columns if tuple(info.column(c).bounds or ()) != tuple(first.column(c).bounds or ())]
        if differ:
            raise InvalidQuery(f"{h.node.url} and {fds.handles[0].node.url} declare different public bounds for "
                               f"{differ}: moments standardised with different bounds do not add. Ask the owners "
                               "to declare the same bounds.", code="bounds_mismatch",
                               details={"columns": differ, "node": h.node.url})


def federated_moments(fds: FederatedDataset, columns: list[str], analysis: str, y: str | None = None,
                      x: list[str] | None = None) -> FederatedMoments:
    """The moments question every node answers (the handle's filter and derived columns included)."""
    spec = fds.handles[0]._spec(kind="moments", columns=list(columns))
    check_same_bounds(fds, spec)
    return FederatedMoments(fds, spec, analysis, y, x)
