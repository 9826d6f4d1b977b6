"""Public, token-free endpoints for other organisations' tools: DCAT-AP catalogue, ODRL agreements, node keys.

Everything here is public metadata (what the catalogue already shows analysts), so portals can harvest
it without an account. See :mod:`workbench.node.linked_data` and docs/ecosystem.md.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from jwt.algorithms import OKPAlgorithm

from .dpop import jwk_thumbprint
from .linked_data import dcat_catalogue, odrl_policy
from .deps import Service, dataset_entry

router = APIRouter()
JSON_LD = "application/ld+json"


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


@router.get("/catalog.jsonld", tags=["catalogue"])
def dcat(request: Request, service: Service) -> JSONResponse:
    """The catalogue as DCAT-AP JSON-LD (no token needed: public metadata only)."""
    infos = [e.info for e in service.catalog.entries()]
    return JSONResponse(dcat_catalogue(infos, _base(request), service.name), media_type=JSON_LD)


@router.get("/datasets/{name}/agreement", tags=["catalogue"])
def agreement(name: str, request: Request, service: Service) -> JSONResponse:
    """The dataset's sharing agreement as an ODRL 2.2 Offer in JSON-LD (no token needed)."""
    return JSONResponse(odrl_policy(dataset_entry(service, name).info, _base(request), service.name),
                        media_type=JSON_LD)


@router.get("/jwks", tags=["node"])
def jwks(service: Service) -> dict:
    """The node's public token-signing key (Ed25519), as a consortium directory lists it."""
    jwk = OKPAlgorithm.to_jwk(service.authority.public_key, as_dict=True)
    return {"keys": [{**jwk, "alg": "EdDSA", "use": "sig", "kid": jwk_thumbprint(jwk)}]}
