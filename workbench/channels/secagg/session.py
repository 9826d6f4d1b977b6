"""The session both secure-aggregation protocols share, analyst side (HE: :mod:`workbench.channels.secagg.kernel`,
SMPC: :mod:`workbench.channels.secagg.smpc_kernel`).

Which aggregator every node trusts, the free preview on every node before anything is charged, asking every
node in parallel, the aggregator's HTTP client, and the result every protocol returns. A protocol registers
its runner in :data:`PROTOCOLS` under its name (``"he"``, ``"smpc"``); :func:`workbench.channels.secagg.kernel.secure_aggregate`
runs the one asked for.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import httpx
import numpy as np

from workbench.errors import BudgetExceeded, ConnectionFailed, InvalidQuery, WorkbenchError
from workbench.protocol import PROTOCOL_HEADER, PROTOCOL_VERSION
from workbench.wire import raise_for_error, send
from workbench.channels.secagg import he_params as params
from workbench.channels.secagg.wire import EncodingPlan, HEOp, HEPreview, NoiseMode, plan

if TYPE_CHECKING:
    from workbench.client.dataset import RemoteDataset
    from workbench.client.federation import FederatedDataset

__all__ = ["ENV_AGGREGATOR", "PROTOCOLS", "AggregatorClient", "SecureAggregate", "aggregator_url", "ask_all",
           "node_call", "preflight"]

ENV_AGGREGATOR = "WORKBENCH_AGGREGATOR"

#: Secure-aggregation protocols by name: ``runner(fds, op, epsilon, mode=..., aggregator=...)`` returns the
#: decrypted :class:`SecureAggregate`. Filled by the protocols' modules when they are imported.
PROTOCOLS: dict[str, Callable[..., "SecureAggregate"]] = {}


class AggregatorClient:
    """HTTP calls to an aggregator (JSON errors re-raised as Workbench errors)."""

    def __init__(self, url: str, timeout: float = 300.0):
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout, connect=10.0),
                                  headers={PROTOCOL_HEADER: PROTOCOL_VERSION})
        self.bytes_sent = 0
        self.bytes_received = 0

    def request(self, method: str, path: str, json: Any = None, headers: dict | None = None) -> dict:
        response = send(self._http, method, "/v1" + path, who="aggregator", where=self.url, json=json,
                        headers=headers)
        self.bytes_sent += len(response.request.content or b"")
        self.bytes_received += len(response.content)
        raise_for_error(response, "aggregator", prefix="Aggregator: ")
        return response.json()

    def close(self) -> None:
        self._http.close()


def aggregator_url(handles: list["RemoteDataset"], given: str | None) -> str:
    """The aggregator: given, or $WORKBENCH_AGGREGATOR, or the one every node trusts."""
    if given or os.environ.get(ENV_AGGREGATOR):
        return (given or os.environ[ENV_AGGREGATOR]).rstrip("/")
    common: set[str] | None = None
    for h in handles:
        urls = {a["url"] for a in node_call(h, "GET", "/he/aggregators")["aggregators"]}
        common = urls if common is None else common & urls
    if not common:
        raise InvalidQuery("No aggregator is trusted by every node: pass aggregator='http://...' (one the node "
                           "owners trust) or set $WORKBENCH_AGGREGATOR.", code="untrusted_aggregator")
    if len(common) > 1:
        raise InvalidQuery(f"Several aggregators are trusted by every node ({sorted(common)}); pass aggregator=.",
                           code="invalid_query")
    return common.pop()


def node_call(handle: "RemoteDataset", method: str, path: str, json: Any = None, retries: int = 2) -> Any:
    try:
        return handle.node.request(method, path, json=json, retries=retries)
    except ConnectionFailed as exc:
        raise ConnectionFailed(f"Node {handle.node.url} is unreachable: {exc.message}",
                               details={"node": handle.node.url}) from None


@dataclass
class SecureAggregate:
    """A decrypted total and everything needed to read it."""

    plan: EncodingPlan
    totals: list[int]
    parties: list[str]
    nodes: list[str]
    aggregator: str
    session_id: str
    contributions: list[Any]
    bytes: dict = field(default_factory=dict)
    protocol: str = "he"
    result_ciphertext: str | None = None  # evaluate: the summed CKKS ciphertext, decrypted by the caller
    context: Any = field(default=None, repr=False)  # the secret context (HE), kept in the kernel

    def values(self) -> np.ndarray:
        return np.array([t / 10 ** d for t, d in zip(self.totals, self.plan.decimals)], dtype=float)

    def attrs(self) -> dict:
        return {"nodes": self.nodes, "parties": self.parties, "aggregator": self.aggregator,
                "session_id": self.session_id, "mode": self.plan.mode, "protocol": self.protocol,
                "epsilon": self.plan.epsilon,
                "epsilon_charged": {c_node: c.epsilon_charged for c_node, c in zip(self.nodes, self.contributions)},
                "replayed": {c_node: c.replayed for c_node, c in zip(self.nodes, self.contributions)},
                "release_ids": {c_node: c.release_id for c_node, c in zip(self.nodes, self.contributions)},
                "bytes": self.bytes, "params": params.params_doc() if self.protocol == "he" else {}}


def preflight(fds: "FederatedDataset", op: HEOp, epsilon: float, mode: NoiseMode, aggregator: str | None,
              protocol: str = "he") -> tuple[list["RemoteDataset"], EncodingPlan, str]:
    """Check every node (price, budget, encoding) before anything is charged; returns handles, plan, aggregator."""
    if mode not in ("distributed", "conservative"):
        raise InvalidQuery("mode is 'distributed' or 'conservative'.", code="invalid_query")
    handles = list(fds.handles)
    if len(handles) < 2:
        raise InvalidQuery("A secure sum needs at least two nodes (an embedded wb.connect() node cannot run one: "
                           "use `workbench demo` or real nodes and an aggregator).", code="privacy_violation")
    k = len(handles)
    local_plan = plan(fds.schema, op, k, epsilon, mode)
    url = aggregator_url(handles, aggregator)
    for h in handles:
        body = {"op": op.model_dump(mode="json"), "epsilon": epsilon, "mode": mode, "parties": k}
        if h.grant_id is not None:
            body["grant_id"] = h.grant_id
        preview = HEPreview.model_validate(node_call(h, "POST", h.endpoint("/he/preview"), json=body))
        if preview.epsilon_left_before is not None and preview.epsilon_left_before < epsilon:
            raise BudgetExceeded(f"Your grant on {h.node.url} has epsilon {preview.epsilon_left_before:g} left, "
                                 f"less than {epsilon:g}; nothing was charged on any node.", code="budget_exceeded",
                                 details={"node": h.node.url})
    return handles, local_plan, url


def ask_all(handles: list["RemoteDataset"], ask) -> list:
    """Call ``ask(handle)`` on every node in parallel; one failure raises, naming who was charged."""
    with ThreadPoolExecutor(max_workers=min(8, len(handles))) as pool:
        futures = [pool.submit(ask, h) for h in handles]
        replies, failures, charged = [], [], []
        for h, f in zip(handles, futures):
            try:
                replies.append(f.result())
                charged.append(h.node.url)
            except WorkbenchError as exc:
                failures.append((h.node.url, exc))
    if failures:
        url0, exc = failures[0]
        raise type(exc)(f"Node {url0} did not contribute: {exc.message} "
                        f"(other nodes may have been charged; repeat the call to replay their part for free).",
                        code=exc.code, details={"node": url0, "failed": [u for u, _ in failures],
                                                "charged": charged})
    return replies

