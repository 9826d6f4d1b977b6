"""The node's HTTP application, assembled from its channels (the only module that knows them all).

``node/`` holds what every channel shares and never imports a channel; each
channel brings a router and, where it needs one, an ``install(app, service)``
hook (middleware, catalogue annotations, metrics collectors). To add a
channel, add one line to :data:`CHANNELS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fastapi import APIRouter, FastAPI

from .channels.dp import fast_replay
from .channels.dp import routes as dp_routes
from .channels.fl import metrics as fl_metrics
from .channels.fl import routes as fl_routes
from .channels.secagg import routes as he_routes
from .channels.jobs import routes as jobs_routes
from .node import ecosystem_routes, governance_routes, routes as node_routes
from .node.app import finish_app, new_app
from .node.service import NodeService
from .channels.secagg import smpc_routes
from .channels.synth import mocks
from .channels.synth import routes as synth_routes

__all__ = ["CHANNELS", "Channel", "create_app"]


@dataclass(frozen=True)
class Channel:
    """One part of the node's API: its routes (under ``/v1``) and what it adds to the app."""

    name: str
    router: APIRouter
    install: Callable[[FastAPI, NodeService], None] | None = None


#: The node's API, in the order its routes are matched.
CHANNELS: list[Channel] = [
    Channel("node", node_routes.router),
    Channel("dp", dp_routes.router, fast_replay.install),
    Channel("he", he_routes.router),
    Channel("smpc", smpc_routes.router),
    Channel("fl", fl_routes.router, fl_metrics.install),
    Channel("synth", synth_routes.router, mocks.install),
    Channel("jobs", jobs_routes.router),
    Channel("governance", governance_routes.router),
    Channel("ecosystem", ecosystem_routes.router),
]


def create_app(service: NodeService) -> FastAPI:
    """The node's application for ``service``: every channel's routes, then the node's outer middleware."""
    app = new_app(service)
    for channel in CHANNELS:
        app.include_router(channel.router, prefix="/v1")
    for channel in CHANNELS:
        if channel.install is not None:
            channel.install(app, service)
    return finish_app(app, service)
