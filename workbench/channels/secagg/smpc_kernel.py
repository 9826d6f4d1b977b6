"""The analyst's half of SMPC secure sums: open a relay session, collect the partial sums, add them mod P.

The kernel holds no key here: each node returns a partial sum that is
uniformly random on its own; only all of them together give the (noisy)
total. See :mod:`workbench.channels.secagg.smpc_routes` for what a node does.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from workbench.errors import WorkbenchError
from workbench.channels.secagg.session import PROTOCOLS, AggregatorClient, SecureAggregate, ask_all, node_call, preflight
from workbench.channels.secagg.wire import HEOp, NoiseMode, SessionCreated
from workbench.channels.secagg import smpc_field as field
from workbench.channels.secagg.smpc_wire import SmpcContributeResponse

if TYPE_CHECKING:
    from workbench.client.dataset import RemoteDataset
    from workbench.client.federation import FederatedDataset


def smpc_aggregate(fds: "FederatedDataset", op: HEOp, epsilon: float, *, mode: NoiseMode = "distributed",
                   aggregator: str | None = None) -> SecureAggregate:
    """One SMPC secure-aggregation session over every node of ``fds``; returns the noisy total.

    Privacy guarantee: as :func:`workbench.channels.secagg.kernel.secure_aggregate` (same
    noise, same charge: ``epsilon`` once per node). You receive one partial sum
    per node; each is a sum of shares, uniformly random on its own.
    """
    handles, local_plan, url = preflight(fds, op, epsilon, mode, aggregator, protocol="smpc")
    parties = [h.node.name for h in handles]
    agg = AggregatorClient(url)
    try:
        created = SessionCreated.model_validate(agg.request("POST", "/sessions", json={
            "dataset": fds.name, "op": op.model_dump(mode="json"), "epsilon": epsilon, "mode": mode,
            "parties": parties, "protocol": "smpc"}))

        def ask(h: "RemoteDataset") -> SmpcContributeResponse:
            body = {"aggregator_url": url, "session_id": created.session_id, "request_id": uuid.uuid4().hex}
            if h.grant_id is not None:
                body["grant_id"] = h.grant_id
            try:
                return SmpcContributeResponse.model_validate(
                    node_call(h, "POST", h.endpoint("/smpc/contribute"), json=body, retries=1))
            except WorkbenchError:
                try:  # release the other nodes, which are waiting for this one's key or shares
                    agg.request("POST", f"/sessions/{created.session_id}/abort",
                                headers={"X-Result-Token": created.result_token})
                except WorkbenchError:
                    pass
                raise

        replies = ask_all(handles, ask)
        length = len(local_plan.slots)
        if any(len(r.partial) != length for r in replies):
            raise WorkbenchError("A node returned a partial sum of the wrong length.", code="internal_error")
        totals = field.decode(field.add(*[r.partial for r in replies]))
        sizes = {"shares_per_node": replies[0].share_bytes if replies else 0,
                 "analyst_sent": agg.bytes_sent, "analyst_received": agg.bytes_received}
    finally:
        agg.close()
    return SecureAggregate(local_plan, totals, parties, [h.node.url for h in handles], url, created.session_id,
                           replies, sizes, "smpc")


PROTOCOLS["smpc"] = smpc_aggregate
