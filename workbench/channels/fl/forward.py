"""The Flower ClientApp that both engines run: it hands each message to the node's own ClientApp.

Under the simulation engine it runs in a worker thread of Flower's simulation
backend (or a Ray actor) on the analyst's machine and reaches node *i*
(``partition-id``) over HTTP with the analyst's token, on one kept-alive
connection per node for the job;
under the deployment engine it runs inside the node's SuperNode and reaches
the local node with the node-local key (``node_config``). Either way the real
client part (training, noise, SecAgg+ masking) runs in the node process, so
neither the analyst nor the aggregator ever holds a node's SecAgg+ secrets or
an un-noised update.
"""

from __future__ import annotations

import base64
import json
import threading
from typing import Any

__all__ = ["NodeLink", "close_links", "deployment_client_app", "forward", "simulation_client_app"]

NodeLink = dict  # {"url": str, "job_id": str, "headers": {...}}; "_http" holds its kept-alive client

_clients_lock = threading.Lock()


class NodeRefused(RuntimeError):
    """A node refused a message; the text carries its stable code for the aggregator."""


def _http(link: NodeLink):
    """The link's HTTP client, created once and kept alive for the job's rounds.

    A fresh client per message (``httpx.post``) built an SSL context and a TCP
    connection every time: ~150 ms of a ~260 ms forward on a 2-core machine.
    """
    import httpx

    with _clients_lock:
        client = link.get("_http")
        if client is None:
            # Idle connections are dropped after 2 s, before a server closes them (uvicorn: 5 s), so a
            # round is never posted on a connection the node is closing at that moment.
            client = link["_http"] = httpx.Client(headers=link.get("headers", {}),
                                                  timeout=float(link.get("timeout", 900)),
                                                  limits=httpx.Limits(keepalive_expiry=2.0))
        return client


def close_links(links: list[NodeLink]) -> None:
    """Close the kept-alive HTTP clients of a job's links."""
    with _clients_lock:
        clients = [link.pop("_http", None) for link in links]
    for client in clients:
        if client is not None:
            client.close()


def forward(link: NodeLink, message) -> Any:
    """POST one Flower message to the node's job endpoint; return the node's reply message."""
    import httpx
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    body = {"message": base64.b64encode(message_to_proto(message).SerializeToString()).decode()}
    try:
        response = _http(link).post(f"{link['url']}/v1/fl/jobs/{link['job_id']}/messages", json=body)
    except httpx.HTTPError as exc:
        raise NodeRefused("workbench-error " + json.dumps(
            {"code": "node_unreachable", "message": f"Cannot reach the node: {exc}"[:300]})) from None
    if response.status_code >= 400:
        try:
            err = response.json()
            details = {"code": str(err["code"]), "message": str(err["message"])[:500]}
        except Exception:  # noqa: BLE001
            details = {"code": "computation_failed", "message": f"The node answered HTTP {response.status_code}."}
        raise NodeRefused("workbench-error " + json.dumps(details))
    proto = ProtoMessage()
    proto.ParseFromString(base64.b64decode(response.json()["message"]))
    return message_from_proto(proto)


def _no_client(context):  # the forwarding mod never calls the wrapped client
    raise RuntimeError("unreachable")


def simulation_client_app(links: list[NodeLink]):
    """ClientApp for the simulation engine: virtual node ``partition-id`` forwards to ``links[partition-id]``."""
    from flwr.clientapp import ClientApp

    def forwarding_mod(message, context, call_next):
        return forward(links[int(context.node_config["partition-id"])], message)

    return ClientApp(client_fn=_no_client, mods=[forwarding_mod])


def _deployment_mod(message, context, call_next):
    """Inside a SuperNode: forward to the node this SuperNode belongs to (set in ``--node-config``)."""
    from pathlib import Path

    from workbench.channels.fl.supernode_key import KEY_HEADER

    node = str(context.node_config["workbench-node"])
    jobs = json.loads(str(context.run_config["job-ids"]))
    if node not in jobs:
        raise NodeRefused("workbench-error " + json.dumps(
            {"code": "fl_unknown_job", "message": f"The run has no job for node {node!r}."}))
    key = Path(str(context.node_config["workbench-key-file"])).read_text().strip()
    link = {"url": str(context.node_config["workbench-url"]), "job_id": jobs[node], "headers": {KEY_HEADER: key}}
    try:
        return forward(link, message)
    finally:
        close_links([link])  # a SuperNode runs each message in a fresh process: nothing to keep alive


def deployment_client_app():
    from flwr.clientapp import ClientApp

    return ClientApp(client_fn=_no_client, mods=[_deployment_mod])
