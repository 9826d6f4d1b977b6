"""The node's HTTP application (FastAPI), served under ``/v1``.

The OpenAPI document at ``/v1/openapi.json`` is the node's API catalogue.
Every error is JSON ``{"code", "message"}``; bodies over the configured size
are refused before they are read; unknown protocol versions are refused in
one sentence.
"""

from __future__ import annotations

import json
import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._version import __version__
from ..errors import RateLimited, WorkbenchError
from ..protocol import PROTOCOL_HEADER, PROTOCOLS_HEADER, SUPPORTED_PROTOCOLS, highest_common
from .api_docs import add_offline_docs
from .service import NodeService

log = logging.getLogger(__name__)


def error_response(status: int, code: str, message: str, details: dict | None = None) -> JSONResponse:
    body = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse(body, status_code=status)


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies larger than ``limit`` bytes (413), declared or streamed."""

    def __init__(self, app, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_large = error_response(413, "payload_too_large", f"Request bodies are limited to {self.limit} bytes.")
        if declared is not None:
            try:
                if int(declared) > self.limit:
                    return await too_large(scope, receive, send)
            except ValueError:
                return await error_response(400, "invalid_body", "Bad Content-Length.")(scope, receive, send)
        received = 0
        refused = False

        # A streamed (chunked) body over the limit: answer 413 ourselves and tell the app the client left
        # (raising here would be turned into a 400 by FastAPI's body reader).
        async def limited_receive():
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    if not refused:
                        refused = True
                        await too_large(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:  # noqa: BLE001
            if not refused:
                raise


class _TooLarge(Exception):
    pass


class ProtocolCheck:
    """Pure ASGI middleware: negotiate the protocol, or refuse in one sentence.

    A client that lists the versions it speaks (``X-Workbench-Protocols: 1, 2``) gets the highest common
    one back in ``X-Workbench-Protocol``; one that names a single version (``X-Workbench-Protocol``, as
    every release since 0.1 does) gets that version if this node speaks it. Without either header the
    newest is used. The chosen version is ``request.state.protocol`` for the routes.
    (Replaces a ``BaseHTTPMiddleware``, which cost a task group and a stream per request.)
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        offered = headers.get(PROTOCOLS_HEADER.lower().encode())
        asked = headers.get(PROTOCOL_HEADER.lower().encode())
        text = (offered if offered is not None else asked or SUPPORTED_PROTOCOLS[-1].encode()).decode("latin-1")
        chosen = highest_common(text)
        if chosen is None or (offered is None and text.strip() != chosen):
            return await error_response(
                400, "protocol_unsupported",
                f"This node speaks Workbench protocol {', '.join(SUPPORTED_PROTOCOLS)}, not "
                f"{text[:16]!r}; upgrade the side that is older.")(scope, receive, send)
        scope.setdefault("state", {})["protocol"] = chosen
        if offered is None:
            return await self.app(scope, receive, send)

        async def answer_with_version(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (PROTOCOL_HEADER.lower().encode(), chosen.encode())]
            await send(message)

        return await self.app(scope, receive, answer_with_version)


def new_app(service: NodeService) -> FastAPI:
    """The node's FastAPI application with its error handlers, before any route (see :mod:`workbench.server`)."""
    app = FastAPI(
        title=f"Workbench node: {service.name}",
        version=__version__,
        description="A Workbench data node. Rows stay here; only DP aggregates and other approved releases leave.",
        openapi_url="/v1/openapi.json",
        docs_url=None,  # served offline below
        redoc_url=None,
    )
    add_offline_docs(app, f"Workbench node {service.name}")
    app.state.service = service
    install_error_handlers(app, "The node hit an internal error; the owner can see it in the logs.")
    return app


def install_error_handlers(app: FastAPI, internal_message: str) -> None:
    """Every error as JSON ``{"code", "message"}``: the one set of handlers of the node and the aggregator."""

    @app.exception_handler(WorkbenchError)
    async def _workbench_error(_request: Request, exc: WorkbenchError):
        response = error_response(exc.status, exc.code, exc.message, exc.details or None)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        problems = []
        for err in exc.errors()[:10]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg', 'invalid')}"[:200])
        return error_response(422, "invalid_body", "The request does not match the API: " + "; ".join(problems))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(OverflowError)
    async def _too_big(_request: Request, _exc: OverflowError):  # e.g. an id past SQLite's 64-bit integers
        return error_response(422, "invalid_body", "A number in the request is too large.")

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: RecursionError):
        return error_response(422, "invalid_body", "The request body is nested too deeply.")

    @app.exception_handler(json.JSONDecodeError)
    async def _bad_json(_request: Request, _exc: json.JSONDecodeError):
        return error_response(422, "invalid_body", "The request body is not valid JSON.")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error_response(500, "internal_error", internal_message)


def finish_app(app: FastAPI, service: NodeService) -> FastAPI:
    """The outer middleware every node has, added after the channels' own (outermost last)."""
    app.add_middleware(ProtocolCheck)
    app.add_middleware(BodyLimit, limit=service.config.node.max_body_bytes)
    from .metrics import install as install_metrics

    install_metrics(app, service)  # outermost: counts every request, 413s included (/metrics, /v1/metrics)
    return app
