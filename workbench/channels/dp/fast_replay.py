"""A fast path for the commonest request under load: the replay of a DP answer already released.

Pure ASGI middleware in front of the node's routes. It answers ``POST
/v1/datasets/{name}/dp/release`` only when everything is already in memory: a
token verified moments ago, a valid request, and an answer this user already
received for exactly this question (see :class:`workbench.node.answers.AnswerIndex`).
The replay is recorded in the audit log (group-committed) before it is sent.
In every other case, including every error, the request goes on to the
FastAPI route unchanged, which is the reference behaviour; this path runs the
same checks and builds the same response with the same functions.

Privacy guarantee: it only returns answers the same user already received
(post-processing of a past release); nothing is computed and no budget moves.
"""

from __future__ import annotations

import asyncio
import json
import re

from workbench.node.auth import bearer_token
from workbench.node.ledger import Cost
from workbench.node.metrics import ROUTE_KEY
from workbench.protocol import PROTOCOL_VERSION, DPRequest
from workbench.channels.dp import routes as node_routes

_PATH = re.compile(r"^/v1/datasets/([A-Za-z0-9_.-]{1,64})/dp/release$")
ROUTE_TEMPLATE = "/v1/datasets/{name}/dp/release"  # the FastAPI route this path stands in for (metrics label)
MAX_BODY = 64 * 1024  # larger bodies take the ordinary path (and its limits)


class ReplayFastPath:
    def __init__(self, app, service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"][-11:] != "/dp/release":
            return await self.app(scope, receive, send)
        match = _PATH.match(scope["path"])
        if match is None:
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:  # read the body once; hand the same messages on if we do not answer
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False) or len(body) > MAX_BODY:
                break
        answer = None
        if messages[-1]["type"] == "http.request" and not messages[-1].get("more_body", False):
            try:
                answer = await self._replay(scope, match.group(1), body)
            except Exception:  # noqa: BLE001 - the ordinary route answers (and reports) anything unusual
                answer = None
        if answer is None:
            pending = list(messages)

            async def replay_receive():
                return pending.pop(0) if pending else await receive()

            return await self.app(scope, replay_receive, send)
        scope[ROUTE_KEY] = ROUTE_TEMPLATE
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    async def _replay(self, scope, name: str, raw: bytes) -> bytes | None:
        token = _bearer(scope)
        if token is None:
            return None
        service = self.service
        principal = service.authority.remembered(token)
        if principal is None:
            return None
        entry, body = node_routes._checked(service, name, DPRequest.model_validate_json(raw))
        future = service.gate.replay_if_known(principal, entry, "dp", body.query.kind,
                                              node_routes.identity(body.query), Cost(body.epsilon, body.delta),
                                              request_id=body.request_id, text=node_routes.readable(body.query))
        if future is None:
            return None
        outcome = await asyncio.wrap_future(future)
        version = (scope.get("state") or {}).get("protocol", PROTOCOL_VERSION)
        return json.dumps(node_routes.answer_json(node_routes.release_response(entry, body, outcome), version),
                          ensure_ascii=False, separators=(",", ":")).encode()


def _bearer(scope) -> str | None:
    for key, value in scope.get("headers") or ():
        if key == b"authorization":
            return bearer_token(value.decode("latin-1"))
    return None


def install(app, service) -> None:
    """Answer replays of the DP release route from memory, before FastAPI parses the body."""
    app.add_middleware(ReplayFastPath, service=service)
