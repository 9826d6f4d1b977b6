"""The panel's owner view: pending access requests, review items and code jobs, with their decisions.

Endpoints (below ``<base_url>/workbench/``, ``?node=NAME`` as elsewhere)::

    GET  owner                          {"node", "requests": [pending], "reviews": [pending, not code jobs],
                                         "jobs": [recent code jobs]}
    GET  owner/jobs/<id>                one code job with its code (or diff), parameters, outputs and checks
    POST owner/requests/<id>/<approve|deny>
    POST owner/reviews/<id>/<approve|reject>
    POST owner/jobs/<id>/<approve|reject|release|withhold>     body {"reason", "outputs": [names] | null}

Decisions are made by the node with the configured connection's identity: the node refuses them unless
that user is an owner, and refuses an owner's decision on their own request or code (``self_approval``).
"""

from __future__ import annotations

import json
from typing import Any

import tornado.web

from .handlers import BaseHandler

ACTIONS = {"requests": ("approve", "deny"), "reviews": ("approve", "reject"),
           "jobs": ("approve", "reject", "release", "withhold")}


class OwnerQueueHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        def queue(node: Any) -> dict[str, Any]:
            reviews = node.request("GET", "/reviews", params={"status": "pending"})
            return {"requests": node.request("GET", "/requests", params={"status": "pending"}),
                    "reviews": [r for r in reviews if r.get("channel") != "jobs"],
                    "jobs": node.request("GET", "/jobs")[:50]}

        answer = await self.node_call(queue)
        if answer:
            conn, body = answer
            self.reply({"node": conn.name, **body})


class OwnerJobHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, job_id: str) -> None:
        answer = await self.node_call(lambda node: node.request("GET", f"/jobs/{int(job_id)}"))
        if answer:
            self.reply(answer[1])


class OwnerDecisionHandler(BaseHandler):
    @tornado.web.authenticated
    async def post(self, kind: str, item: str, action: str) -> None:
        if action not in ACTIONS.get(kind, ()):
            self.reply_error("not_found", f"No decision {action!r} on {kind}.", 404)
            return
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            self.reply_error("invalid_body", "The body is not JSON.", 400)
            return
        decision: dict[str, Any] = {"reason": str(body.get("reason", ""))[:2000]}
        if kind == "jobs" and action in ("release", "withhold"):
            decision["outputs"] = body.get("outputs")
        answer = await self.node_call(lambda node: node.request("POST", f"/{kind}/{int(item)}/{action}",
                                                                json=decision))
        if answer:
            self.reply(answer[1])


def owner_routes(route) -> list[tuple[str, type]]:
    return [(route("owner"), OwnerQueueHandler),
            (route(r"owner/jobs/(\d+)"), OwnerJobHandler),
            (route(r"owner/(requests|reviews|jobs)/(\d+)/([a-z]+)"), OwnerDecisionHandler)]
