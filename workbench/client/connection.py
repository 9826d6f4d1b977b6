"""A connection to one node over HTTP (or in-process, for the embedded demo node)."""

from __future__ import annotations

from typing import Any, Callable

import httpx
import pandas as pd

from .._version import __version__
from ..config import DEMO_NODES_ENV, demo_node_urls, token_for
from ..errors import ConnectionFailed, InvalidQuery, NotSupported, ProtocolMismatch, WorkbenchError
from ..protocol import (PROTOCOL_HEADER, PROTOCOL_VERSION, PROTOCOLS_HEADER, SUPPORTED_PROTOCOLS, DatasetInfo,
                        GrantInfo, HistoryEntry, NodeInfo, highest_common)
from ..wire import raise_for_error, send

DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


class Node:
    """A node you are connected to. Create one with :func:`workbench.connect`."""

    def __init__(self, http: httpx.Client, url: str, embedded: bool = False, owner: Any = None):
        self._http = http
        self.url = url
        self.embedded = embedded
        self._owner = owner  # keeps an embedded node's service alive as long as the handle
        self._info: NodeInfo | None = None
        self.protocol = PROTOCOL_VERSION  # the version agreed with the node (see negotiate)

    # ---------------------------------------------------------------- transport

    def request(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
                retries: int = 2) -> Any:
        """Send one request; wire errors come back as the matching :class:`WorkbenchError`."""
        response = send(self._http, method, "/v1" + path, retries=retries, who="node", where=self.url, json=json,
                        params=params)
        raise_for_error(response, "node")
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    def auth_headers(self) -> dict[str, str]:
        """The headers that identify you to this node (token, protocol), for a channel's own HTTP client."""
        return {k: v for k, v in self._http.headers.items() if k.lower() in ("authorization", PROTOCOL_HEADER.lower())}

    @property
    def asgi_app(self) -> Any:
        """An embedded node's ASGI app (for a channel that must serve it over loopback); ``None`` over HTTP."""
        return getattr(self._http, "app", None) if self.embedded else None

    # ---------------------------------------------------------------- node-level calls

    def info(self) -> dict:
        """Node name, software and protocol versions, and who you are here."""
        info = NodeInfo.model_validate(self.request("GET", "/me"))
        self._info = info
        return info.model_dump()

    @property
    def name(self) -> str:
        if self._info is None:
            self.info()
        return self._info.name

    def catalog(self) -> pd.DataFrame:
        """Every dataset's public description: name, tier, description, licence, version, columns, and its
        sharing agreement (a dict, or None; protocol 2 nodes only) -- the JupyterLab panel shows these rows.

        ``dataset_cap_epsilon`` is the owner's lifetime cap on what all analysts together may spend on
        the dataset, not your budget: yours is your grant (``node.grants()``, ``ds.budget()``).
        """
        rows = []
        for raw in self.request("GET", "/catalog"):
            info = DatasetInfo.model_validate(raw)
            rows.append({"name": info.name, "tier": info.tier, "description": info.description,
                         "licence": info.licence, "columns": len(info.columns),
                         "privacy_unit": info.privacy_unit.id_column or "row",
                         "dataset_cap_epsilon": info.budget.epsilon if info.budget else None,
                         "version": info.version, "mock": info.has_mock,
                         "agreement": None if info.agreement is None else info.agreement.model_dump(mode="json")})
        return pd.DataFrame(rows, columns=["name", "tier", "description", "licence", "columns", "privacy_unit",
                                           "dataset_cap_epsilon", "version", "mock", "agreement"])

    def dataset(self, name: str, *, purpose: str | None = None, grant_id: int | None = None):
        """A handle to a remote dataset. It holds public metadata only, never rows.

        ``purpose=`` (or ``grant_id=``) picks which of your grants its releases spend.
        """
        from .dataset import RemoteDataset

        info = DatasetInfo.model_validate(self.request("GET", f"/datasets/{_quote(name)}"))
        if purpose is not None and grant_id is None:
            matches = [g for g in self._grant_models() if g.dataset == name and g.purpose == purpose and not g.revoked]
            if not matches:
                from ..errors import NotAuthorized
                raise NotAuthorized(f"You have no grant on '{name}' for purpose {purpose!r}.", code="no_grant")
            grant_id = matches[-1].grant_id
        return RemoteDataset(self, info, grant_id=grant_id)

    def _grant_models(self) -> list[GrantInfo]:
        return [GrantInfo.model_validate(g) for g in self.request("GET", "/grants")]

    def grants(self) -> pd.DataFrame:
        """Your grants: budget, spent and left, purpose, expiry."""
        rows = [g.model_dump() for g in self._grant_models()]
        return pd.DataFrame(rows, columns=list(GrantInfo.model_fields))

    def history(self, limit: int = 500) -> pd.DataFrame:
        """Your releases and replays on this node, newest first."""
        rows = [HistoryEntry.model_validate(h).model_dump()
                for h in self.request("GET", "/history", params={"limit": limit})]
        return pd.DataFrame(rows, columns=list(HistoryEntry.model_fields))

    def requests(self, status: str | None = None) -> pd.DataFrame:
        """Your access requests and their status (owners: everyone's)."""
        from ..protocol import AccessRequestInfo

        try:
            rows = self.request("GET", "/requests", params={"status": status} if status else None)
        except WorkbenchError as exc:
            if exc.code in ("not_found", "method_not_allowed"):
                raise NotSupported("This node does not support access requests.", code="not_supported") from None
            raise
        return pd.DataFrame(rows, columns=list(AccessRequestInfo.model_fields))

    def reviews(self, status: str | None = None) -> pd.DataFrame:
        """Releases held for an owner's review (yours; owners: everyone's, with what would leave)."""
        from ..protocol import ReviewInfo

        rows = self.request("GET", "/reviews", params={"status": status} if status else None)
        return pd.DataFrame(rows, columns=list(ReviewInfo.model_fields))

    def audit(self) -> list[dict]:
        """The audit log as records (auditors and owners: all; analysts: their own)."""
        import json

        text = self.request("GET", "/audit")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def close(self) -> None:
        self._http.close()
        if self._owner is not None and hasattr(self._owner, "close"):
            self._owner.close()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "embedded demo node" if self.embedded else self.url
        return f"<workbench.Node {where}>"

    def _repr_html_(self) -> str:
        from .display import node_html

        return node_html(self)


def _bound(token: str) -> bool:
    """True if the token (read unverified, for choosing the scheme only) names a DPoP key (``cnf.jkt``)."""
    from .login import unverified_claims

    cnf = unverified_claims(token).get("cnf")
    return isinstance(cnf, dict) and "jkt" in cnf


def _quote(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


#: What ``connect()`` with no address starts: the in-process demo node. Set by the package root
#: (:mod:`workbench`) to :func:`workbench.demo.embedded.connect_embedded`, so the client never imports the node.
embedded_node: Callable[..., Node] | None = None


def connect(url: str | None = None, token: str | None = None, *, timeout: float = 300.0,
            reset: bool = False, dpop_key: Any = None) -> Node:
    """Connect to a node.

    ``connect("http://host:port")`` talks HTTP; the token comes from ``token=``,
    ``WORKBENCH_TOKEN`` or the config file (see :mod:`workbench.config`).
    ``connect()`` with no address: inside ``workbench demo`` (or on Binder),
    where ``$WORKBENCH_DEMO_NODES`` is set, the first demo node, the one the
    JupyterLab panel shows; anywhere else the embedded demo node in this
    process (same app, in-process transport, no server needed). ``reset=True``
    gives the embedded node a fresh ledger first (full budget, no history).
    A DPoP-bound token (its ``cnf.jkt``) is sent with a fresh proof per request,
    signed by ``dpop_key`` (a :class:`~workbench.client.dpop.DPoPKey`; default:
    your key beside the client config).
    """
    if url is None:
        demo = demo_node_urls()
        if demo:
            if reset:
                raise InvalidQuery(f"connect(reset=True) resets the embedded node, but this kernel runs inside "
                                   f"`workbench demo` ({DEMO_NODES_ENV} is set): restart the demo with "
                                   "`workbench demo --reset` instead.", code="invalid_query")
            return connect(demo[0], token, timeout=timeout, dpop_key=dpop_key)
        if embedded_node is None:
            raise ConnectionFailed("No embedded node in this installation; pass a node's address.")
        return embedded_node(reset=reset)
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConnectionFailed(f"A node address starts with http:// or https://, not {url!r}.")
    headers = {"User-Agent": f"workbench/{__version__}"}  # the protocol header is set by negotiate()
    found = token_for(url, token)
    auth = None
    if found and _bound(found):
        from .dpop import DPoPAuth, DPoPKey

        auth = DPoPAuth(found, dpop_key if isinstance(dpop_key, DPoPKey) else DPoPKey.load_or_create(dpop_key))
    elif found:
        headers["Authorization"] = f"Bearer {found}"
    http = httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), auth=auth)
    node = Node(http, url)
    negotiate(node)  # fails fast, with a clear error, if nothing answers there
    return node


def negotiate(node: Node) -> str:
    """Agree on a protocol version with the node: state ours, take the highest common one, or refuse.

    Nodes since protocol 2 answer the ``X-Workbench-Protocols`` offer in ``X-Workbench-Protocol``;
    older ones ignore it, and their ``/info`` lists what they speak.
    """
    offer = ", ".join(SUPPORTED_PROTOCOLS)
    try:
        response = node._http.get("/v1/info", headers={PROTOCOLS_HEADER: offer})
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"Cannot reach the node at {node.url}: {exc}") from None
    if response.status_code != 200:
        node.request("GET", "/info")  # the node's own error, as a WorkbenchError
    chosen = response.headers.get(PROTOCOL_HEADER) or highest_common(", ".join(response.json().get("protocols", [])))
    if chosen not in SUPPORTED_PROTOCOLS:
        raise ProtocolMismatch(f"The node at {node.url} speaks Workbench protocol "
                           f"{', '.join(response.json().get('protocols', [])) or '?'} and this client {offer}; "
                           "upgrade the side that is older.", code="protocol_unsupported")
    node.protocol = chosen
    node._http.headers[PROTOCOL_HEADER] = chosen
    return chosen
