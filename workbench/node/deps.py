"""What every route depends on: the node service, the authenticated caller, a dataset's public face.

Channels' routes import :data:`Service` and :data:`Caller` from here; authentication (bearer or
DPoP-bound tokens, see :mod:`workbench.node.dpop`) happens once per request, in :func:`caller_of`.
"""

from __future__ import annotations

from typing import Annotated, Callable

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ..errors import NotAuthenticated
from ..protocol import PROTOCOL_VERSION, DatasetInfo
from . import audit
from .auth import Principal, credentials
from .dpop import refused
from .catalog import DatasetEntry
from .service import NodeService


def service_of(request: Request) -> NodeService:
    return request.app.state.service


def _credentials(request: Request) -> tuple[str, str]:
    found = credentials(request.headers.get("authorization", ""))
    if found is None:
        raise NotAuthenticated("Send your token as 'Authorization: Bearer <token>' (or 'DPoP <token>' with a DPoP "
                               "proof).", code="not_authenticated")
    return found


def _sender_checked(service: NodeService, request: Request, scheme: str, token: str,
                    principal: Principal) -> Principal:
    """:func:`_check_sender`, its refusals audited."""
    try:
        return _check_sender(service, request, scheme, token, principal)
    except NotAuthenticated as exc:
        _audit_sender_refusal(service, request, principal, exc)
        raise


def _audit_sender_refusal(service: NodeService, request: Request, principal: Principal,
                          exc: NotAuthenticated) -> None:
    """Counted like every failed authentication (:mod:`workbench.node.auth_failures`): a flood of bad proofs
    with a stolen token adds at most two audit records per source, reason and window, naming the token's user."""
    service.auth_failures.record(request.client.host if request.client else None,
                                 str(exc.details.get("reason") or "sender_constraint"),
                                 f"{exc.message} (a token of {principal.name!r})")


def _check_sender(service: NodeService, request: Request, scheme: str, token: str,
                  principal: Principal) -> Principal:
    """Apply the DPoP rules (workbench.node.dpop) to an authenticated request (no database).

    ``htu`` is compared with ``[node] public_url`` + path when set (a node behind a TLS-terminating
    proxy sees another scheme and host than its clients), else with the URL the request arrived at.
    """
    public = service.config.node.public_url
    url = public.rstrip("/") + request.url.path if public else str(request.url.replace(query="", fragment=""))
    proofs = request.headers.getlist("dpop")
    if len(proofs) > 1:  # RFC 9449 section 4.3: exactly one proof
        raise refused("dpop_malformed", "Send one DPoP header per request, not several.")
    service.authority.check_sender(principal, scheme, proofs[0] if proofs else None, request.method, url, token)
    return principal


def principal_of(request: Request) -> Principal:
    """Authenticate the token (every endpoint but /info and /health needs one), DPoP proof included."""
    service, (scheme, token) = service_of(request), _credentials(request)
    principal = service.authority.recalled(token) or _authenticate(service, request, token)
    return _sender_checked(service, request, scheme, token, principal)


async def caller_of(request: Request) -> Principal:
    """:func:`principal_of` for the event loop: a token verified moments ago costs no thread and no database."""
    service, (scheme, token) = service_of(request), _credentials(request)
    known = service.authority.remembered(token)
    if known is not None and scheme == "bearer":
        return known  # remembered tokens are unbound and the node does not require binding: no proof to check
    principal = service.authority.recalled(token) or await run_in_threadpool(_authenticate, service, request, token)
    try:  # a signature check, no database: on the event loop, sparing a thread hop per request
        return _check_sender(service, request, scheme, token, principal)
    except NotAuthenticated as exc:
        await run_in_threadpool(_audit_sender_refusal, service, request, principal, exc)
        raise


def _authenticate(service: NodeService, request: Request, token: str) -> Principal:
    try:
        principal = service.authority.verify(token)
    except NotAuthenticated as exc:  # aggregated per source and window: a flood cannot grow the log unbounded
        service.auth_failures.record(request.client.host if request.client else None,
                                     str(exc.details.get("reason") or exc.message), exc.message)
        raise
    if service.first_use(principal.token_id):
        with service.store.transaction() as session:
            audit.append(session, principal.name, "login", None, role=principal.role, token_id=principal.token_id,
                         **({"issuer": principal.issuer} if principal.issuer else {}))
    return principal


async def _service(request: Request) -> NodeService:  # async: FastAPI runs sync dependencies on a thread
    return service_of(request)


Service = Annotated[NodeService, Depends(_service)]
Caller = Annotated[Principal, Depends(caller_of)]


def dataset_entry(service: NodeService, name: str) -> DatasetEntry:
    return service.catalog.get(name)


#: What channels add to a dataset's public metadata (synthesis: ``has_mock``), registered by
#: :mod:`workbench.server`; each gets the metadata so far and returns it, changed or not.
INFO_ANNOTATORS: list[Callable[[NodeService, DatasetEntry, DatasetInfo], DatasetInfo]] = []


def public_info(service: NodeService, entry: DatasetEntry) -> DatasetInfo:
    """A dataset's public metadata as the catalogue shows it."""
    info = entry.info
    for annotate in INFO_ANNOTATORS:
        info = annotate(service, entry, info)
    return info


def protocol_of(request: Request) -> str:
    """The protocol version negotiated for this request (workbench.node.app.ProtocolCheck)."""
    return getattr(request.state, "protocol", PROTOCOL_VERSION)
