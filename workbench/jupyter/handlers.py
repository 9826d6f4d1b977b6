"""Tornado handlers behind the ``workbench-lab`` sidebar.

Every route sits under ``<base_url>/workbench/`` and every method is
``@tornado.web.authenticated``: only the owner of the Jupyter server (its
token or its JupyterHub user) can call them. The handlers read the user's
Workbench connections with :func:`workbench.config.load_connections` and call
the nodes with the kernel library, in a worker thread, from the Jupyter
server process. Node tokens stay in that process: no response carries a
token, and URLs are shown without credentials.

Endpoints (all ``GET``, all JSON)::

    workbench/nodes                      configured nodes, probed: up/down/error, version, user, role
    workbench/catalog?node=NAME          {"node", "datasets": [catalogue rows]}
    workbench/datasets/<name>?node=NAME  the dataset's public schema (DatasetInfo)
    workbench/grants?node=NAME           {"node", "grants": [my grants with epsilon spent/left]}
    workbench/history?node=NAME          {"node", "releases": [my releases]}
    workbench/requests?node=NAME         {"node", "requests": [my access requests]}
    workbench/owner...                   the owner view: see :mod:`workbench.jupyter.owner_handlers`

The nodes are the user's configured connections plus, as ``embedded-<pid>``, the
embedded node of every live notebook kernel that uses one (it serves itself on
loopback for the panel; see ``workbench.demo.embedded``).

``node`` defaults to the first configured connection. Every error is
``{"code": ..., "message": ...}``; a node's own error keeps the node's code
and HTTP status (``node_unreachable`` 503, ``not_authenticated`` 401,
``not_supported`` 501, ``unknown_dataset`` 404, ...). Errors of this
extension: ``unknown_node`` 404, ``config_error`` 500, ``not_found`` 404,
``internal_error`` 500.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

__all__ = ["ENDPOINTS", "WorkbenchClients", "setup_handlers"]

#: The routes this extension serves, below ``<base_url>/workbench/``.
ENDPOINTS = (
    "nodes",
    "catalog",
    "datasets/<name>",
    "grants",
    "history",
    "requests",
    "owner",
    "owner/jobs/<id>",
    "owner/<kind>/<id>/<decision>",
)

#: Seconds a panel read may wait for a node (the library's default, 300 s, is
#: for releases; the panel only reads, and a hung node must not hold threads).
NODE_TIMEOUT_S = 30.0

# Calls to nodes block (HTTP); they run here, never on the server's event loop.
_EXECUTOR = ThreadPoolExecutor(max_workers=8, thread_name_prefix="workbench-jupyter")


class ExtensionError(Exception):
    """An error of the server extension itself (not of a node)."""

    def __init__(self, code: str, message: str, status: int):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def public_url(url: str) -> str:
    """``url`` without user info, query or fragment (never show credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def records(frame: Any) -> list[dict[str, Any]]:
    """JSON-ready rows of a pandas (or polars) DataFrame or a list of models."""
    if frame is None:
        return []
    if hasattr(frame, "to_json") and hasattr(frame, "columns"):  # pandas
        return json.loads(frame.to_json(orient="records", date_format="iso", date_unit="s"))
    if hasattr(frame, "to_dicts"):  # polars
        return _jsonable(frame.to_dicts())
    if isinstance(frame, list):
        return [_jsonable(row) for row in frame]
    raise TypeError(f"cannot turn {type(frame).__name__} into rows")


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


class _Slot:
    """One connection's client and the lock that serialises calls to it."""

    def __init__(self, key: tuple[str, str | None]) -> None:
        self.key = key
        self.client: Any = None
        self.lock = threading.Lock()

    def close(self) -> None:
        client, self.client = self.client, None
        close = getattr(client, "close", None)
        if callable(close):
            try:
                close()
            except Exception:
                pass


class WorkbenchClients:
    """Connected kernel-library clients, one per configured connection.

    The configuration is re-read on every call, so editing
    ``config.toml`` needs no restart. A client is reused while its URL and
    token stay the same, and dropped after a connection or authentication
    failure so the next call connects afresh. Calls to one node are
    serialised: the panel polls, it does not need parallelism per node.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}

    def connections(self) -> list[Any]:
        try:
            from workbench.config import Connection, load_connections, panel_connections

            configured = list(load_connections())
            # Embedded nodes that notebook kernels of this user serve on loopback (wb.connect() with no demo).
            embedded = [Connection(name=e["name"], url=e["url"], token=e["token"]) for e in panel_connections()]
            return configured + [c for c in embedded if all(c.url != k.url for k in configured)]
        except Exception as error:  # a broken config file must read as such
            raise ExtensionError(
                "config_error", f"Cannot read the Workbench configuration: {error}", 500
            ) from error

    def connection(self, name: str | None) -> Any:
        connections = self.connections()
        if not connections:
            raise ExtensionError(
                "no_config",
                "No Workbench node is configured: add [nodes.NAME] to ~/.config/workbench/config.toml "
                "(or the file named by $WORKBENCH_CONFIG), or set WORKBENCH_URL and WORKBENCH_TOKEN.",
                404,
            )
        if name in (None, ""):
            return connections[0]
        for conn in connections:
            if conn.name == name:
                return conn
        raise ExtensionError("unknown_node", f"No node named {name!r} in the Workbench configuration.", 404)

    def call(self, conn: Any, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(client)`` against the node of ``conn`` (blocking)."""
        import workbench as wb

        key = (conn.url, conn.token)
        with self._lock:
            slot = self._slots.get(conn.name)
            if slot is None or slot.key != key:
                if slot is not None:
                    slot.close()
                slot = self._slots[conn.name] = _Slot(key)
        with slot.lock:
            if slot.client is None:
                slot.client = wb.connect(conn.url, token=conn.token, timeout=NODE_TIMEOUT_S)
            try:
                return fn(slot.client)
            except (wb.ConnectionFailed, wb.NotAuthenticated):
                slot.close()
                raise

    def close(self) -> None:
        with self._lock:
            slots, self._slots = list(self._slots.values()), {}
        for slot in slots:
            slot.close()


class BaseHandler(APIHandler):
    """JSON in, JSON out; errors as ``{"code", "message"}``."""

    @property
    def clients(self) -> WorkbenchClients:
        return self.settings["workbench_clients"]

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_EXECUTOR, fn, *args)

    def reply(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))

    def reply_error(self, code: str, message: str, status: int) -> None:
        self.reply({"code": code, "message": message}, status=status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Uncaught errors (and tornado's own 403/404/405) keep the one error shape."""
        reason = self._reason or "error"
        code = {403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(status_code, "internal_error")
        message = reason if status_code < 500 else "Internal error in the Workbench server extension (see the Jupyter server log)."
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps({"code": code, "message": message}))

    async def node_call(self, fn: Callable[[Any], Any]) -> Any:
        """Resolve ``?node=``, call ``fn(client)`` in a thread, map errors.

        Returns ``(connection, result)`` or ``None`` after answering an error.
        """
        import workbench as wb

        try:
            conn = await self.run(self.clients.connection, self.get_argument("node", None))
        except ExtensionError as error:
            self.reply_error(error.code, error.message, error.status)
            return None
        try:
            result = await self.run(self.clients.call, conn, fn)
        except wb.WorkbenchError as error:
            status = int(getattr(error, "status", 502) or 502)
            self.reply_error(error.code, _redact(str(error), conn), status)
            return None
        return conn, result


def _redact(message: str, conn: Any) -> str:
    token = getattr(conn, "token", None)
    if token:
        message = message.replace(token, "[token]")
    return message


class NodesHandler(BaseHandler):
    """``GET workbench/nodes``: every configured node, probed in parallel."""

    @tornado.web.authenticated
    async def get(self) -> None:
        try:
            connections = await self.run(self.clients.connections)
        except ExtensionError as error:
            self.reply_error(error.code, error.message, error.status)
            return
        nodes = await asyncio.gather(*(self._probe(conn) for conn in connections))
        self.reply({"nodes": list(nodes)})

    async def _probe(self, conn: Any) -> dict[str, Any]:
        import workbench as wb

        entry: dict[str, Any] = {"name": conn.name, "url": public_url(conn.url), "status": "down"}
        try:
            info = await self.run(self.clients.call, conn, lambda node: node.info())
        except wb.WorkbenchError as error:
            # down: nothing answers; error: the node answered but refused (token, protocol).
            entry["status"] = "down" if isinstance(error, wb.ConnectionFailed) else "error"
            entry["error"] = {"code": error.code, "message": _redact(str(error), conn)}
            return entry
        except Exception as error:  # a bug or an odd network error: still a readable "down"
            self.log.warning("Workbench: probing node %s failed", conn.name, exc_info=True)
            entry["error"] = {"code": "node_unreachable", "message": _redact(f"{type(error).__name__}: {error}", conn)}
            return entry
        info = _jsonable(info)
        if not isinstance(info, dict):
            info = {}
        entry.update(
            status="up",
            node_name=info.get("name"),
            version=info.get("version"),
            protocol=info.get("protocol"),
            user=info.get("user"),
            role=info.get("role"),
            error=None,
        )
        return entry


class CatalogHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        answer = await self.node_call(lambda node: records(node.catalog()))
        if answer:
            conn, rows = answer
            self.reply({"node": conn.name, "datasets": rows})


class DatasetHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self, name: str) -> None:
        answer = await self.node_call(lambda node: _jsonable(node.dataset(name).schema))
        if answer:
            self.reply(answer[1])


class GrantsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        answer = await self.node_call(lambda node: records(node.grants()))
        if answer:
            conn, rows = answer
            self.reply({"node": conn.name, "grants": rows})


class HistoryHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        answer = await self.node_call(lambda node: records(node.history()))
        if answer:
            conn, rows = answer
            self.reply({"node": conn.name, "releases": rows})


class RequestsHandler(BaseHandler):
    @tornado.web.authenticated
    async def get(self) -> None:
        def requests(node: Any) -> list[dict[str, Any]]:
            import workbench as wb

            if not callable(getattr(node, "requests", None)):
                raise wb.NotSupported("Access requests are not supported by this version of the client library.")
            return records(node.requests())

        answer = await self.node_call(requests)
        if answer:
            conn, rows = answer
            self.reply({"node": conn.name, "requests": rows})


class NotFoundHandler(BaseHandler):
    """Any other path under ``workbench/``: the same JSON error shape."""

    @tornado.web.authenticated
    def get(self, path: str) -> None:
        self.reply_error("not_found", f"No Workbench endpoint {path!r}; see docs/jupyterlab.md.", 404)


def setup_handlers(web_app: Any, log: Any = None) -> None:
    """Add the ``workbench/`` routes to the Jupyter server's tornado app."""
    base_url = web_app.settings["base_url"]
    web_app.settings.setdefault("workbench_clients", WorkbenchClients())

    def route(path: str) -> str:
        return url_path_join(base_url, "workbench", path)

    from .owner_handlers import owner_routes

    handlers = [
        *owner_routes(route),  # the owner view (docs/jupyterlab.md): requests, reviews, code jobs
        (route("nodes"), NodesHandler),
        (route("catalog"), CatalogHandler),
        (route(r"datasets/([^/]+)"), DatasetHandler),
        (route("grants"), GrantsHandler),
        (route("history"), HistoryHandler),
        (route("requests"), RequestsHandler),
        (route("(.*)"), NotFoundHandler),
    ]
    web_app.add_handlers(".*$", handlers)
