"""The node's catalogue and agreements in standard vocabularies, for other portals and partners' tools.

- :func:`odrl_policy`: a dataset's sharing agreement as an ODRL 2.2 ``Offer``
  (JSON-LD): ``use`` permitted under constraints on ``purpose``, ``dateTime``
  (expiry), the Workbench channel, the grantee's identity-provider claims and
  the largest grant (``wb:`` terms, https://w3id.org/workbench/ns#).
- :func:`dcat_catalogue`: the catalogue as DCAT-AP 3 JSON-LD: a
  ``dcat:Catalog`` with its publisher, one ``dcat:Dataset`` per dataset
  (title, description, licence, access rights, version, the agreement as
  ``odrl:hasPolicy``) whose ``dcat:Distribution`` is reached through the
  node's API, a ``dcat:DataService`` whose endpoint description is the
  OpenAPI document.

Both use one inline ``@context`` of namespace prefixes, so they expand and
round-trip without fetching anything. Only public metadata is used (never a
path, a row, or a grant).
"""

from __future__ import annotations

from typing import Any

from ..protocol import DatasetInfo

CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "odrl": "http://www.w3.org/ns/odrl/2/",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "wb": "https://w3id.org/workbench/ns#",
}
ACCESS_RIGHTS = "http://publications.europa.eu/resource/authority/access-right/"
SPDX = "https://spdx.org/licenses/"
LANGUAGE = "http://publications.europa.eu/resource/authority/language/"
FILE_TYPE = "http://publications.europa.eu/resource/authority/file-type/"
CATALOGUE_LICENCE = "CC0-1.0"  # the catalogue's own metadata (names, titles, licences): free to harvest and reuse
_SPDX_IDS = {"CC-BY-4.0", "CC0-1.0", "CC-BY-SA-4.0", "ODbL-1.0", "MIT", "Apache-2.0", "PDDL-1.0"}


def licence_node(text: str) -> dict[str, Any]:
    """A licence as DCAT-AP wants it: an IRI (a URL, or an SPDX id) or a labelled ``dct:LicenseDocument``."""
    if text.startswith(("http://", "https://")):
        return {"@id": text, "@type": "dct:LicenseDocument"}
    if text in _SPDX_IDS:
        return {"@id": SPDX + text, "@type": "dct:LicenseDocument"}
    return {"@type": "dct:LicenseDocument", "rdfs:label": text or "not stated"}


def _constraint(left: str, operator: str, right: Any) -> dict[str, Any]:
    return {"@type": "odrl:Constraint", "odrl:leftOperand": {"@id": left}, "odrl:operator": {"@id": operator},
            "odrl:rightOperand": right}


def odrl_policy(info: DatasetInfo, base_url: str, node_name: str, with_context: bool = True) -> dict[str, Any]:
    """The dataset's agreement as an ODRL Offer (``with_context=False`` when embedded in the catalogue)."""
    agreement = info.agreement
    target = f"{base_url}/v1/datasets/{info.name}"
    constraints = []
    if agreement is not None:
        if agreement.purposes:
            constraints.append(_constraint("odrl:purpose", "odrl:isAnyOf", agreement.purposes))
        if agreement.expires:
            constraints.append(_constraint("odrl:dateTime", "odrl:lteq",
                                           {"@value": agreement.expires, "@type": "xsd:date"}))
        constraints.append(_constraint("wb:channel", "odrl:isAnyOf", agreement.channels))
        for claim, allowed in sorted(agreement.grantee_claims.items()):
            constraints.append({**_constraint("wb:granteeClaim", "odrl:isAnyOf", allowed), "wb:claimName": claim})
        if agreement.max_grant is not None:
            constraints.append(_constraint("wb:grantEpsilon", "odrl:lteq", agreement.max_grant.epsilon))
            constraints.append(_constraint("wb:grantDelta", "odrl:lteq", agreement.max_grant.delta))
    policy = {
        "@id": f"{target}/agreement",
        "@type": "odrl:Offer",
        "odrl:uid": {"@id": f"{target}/agreement"},
        "dct:identifier": agreement.id if agreement is not None and agreement.id else f"{node_name}/{info.name}",
        "odrl:profile": {"@id": "https://w3id.org/workbench/odrl-profile"},
        "odrl:assigner": {"@id": base_url, "@type": "foaf:Agent", "foaf:name": node_name},
        "odrl:target": {"@id": target},
        "dct:license": licence_node(agreement.licence if agreement is not None else info.licence),
        "odrl:permission": [{"@type": "odrl:Permission", "odrl:action": {"@id": "odrl:use"},
                             "odrl:constraint": constraints}],
    }
    return {"@context": CONTEXT, **policy} if with_context else policy


def dcat_catalogue(datasets: list[DatasetInfo], base_url: str, node_name: str) -> dict[str, Any]:
    """The node's catalogue as DCAT-AP JSON-LD (harvestable without a token: public metadata only)."""
    publisher = {"@id": base_url, "@type": "foaf:Agent", "foaf:name": node_name}
    service = {
        "@id": f"{base_url}/v1",
        "@type": "dcat:DataService",
        "dct:title": f"Workbench node {node_name}",
        "dcat:endpointURL": {"@id": f"{base_url}/v1"},
        "dcat:endpointDescription": {"@id": f"{base_url}/v1/openapi.json"},
        "dct:conformsTo": {"@id": "https://w3id.org/workbench/protocol/2", "@type": "dct:Standard"},
        "dct:publisher": {"@id": base_url},
        "dcat:servesDataset": [{"@id": f"{base_url}/v1/datasets/{d.name}"} for d in datasets],
    }
    return {
        "@context": CONTEXT,
        "@id": f"{base_url}/v1/catalog.jsonld",
        "@type": "dcat:Catalog",
        "dct:title": f"Datasets of {node_name}",
        "dct:description": f"The datasets the Workbench node {node_name} answers privacy-safe questions about; "
                           "rows never leave it.",
        "dct:publisher": publisher,
        "foaf:homepage": {"@id": f"{base_url}/v1/docs", "@type": "foaf:Document"},
        "dct:language": {"@id": LANGUAGE + "ENG", "@type": "dct:LinguisticSystem"},
        "dct:license": licence_node(CATALOGUE_LICENCE),
        "dcat:service": [service],
        "dcat:dataset": [_dataset(d, base_url, node_name, publisher) for d in datasets],
    }


def _dataset(info: DatasetInfo, base_url: str, node_name: str, publisher: dict) -> dict[str, Any]:
    url = f"{base_url}/v1/datasets/{info.name}"
    licence = licence_node(info.licence)
    access = "PUBLIC" if info.tier == "open" else "RESTRICTED"
    return {
        "@id": url,
        "@type": "dcat:Dataset",
        "dct:identifier": info.name,
        "dct:title": info.name,
        "dct:description": info.description or info.name,
        "dct:publisher": {"@id": publisher["@id"]},
        "dct:accessRights": {"@id": ACCESS_RIGHTS + access, "@type": "dct:RightsStatement"},
        "dct:license": licence,
        "dcat:version": info.version,
        "dcat:keyword": [c.name for c in info.columns],
        "odrl:hasPolicy": odrl_policy(info, base_url, node_name, with_context=False),
        "dcat:distribution": [{
            "@id": f"{url}#api",
            "@type": "dcat:Distribution",
            "dct:title": f"{info.name} through the Workbench API ("
                         + ("open rows" if info.tier == "open" else "differentially private answers only") + ")",
            "dcat:accessURL": {"@id": url},
            "dct:description": ("Open rows, read through the node's API under the dataset's licence."
                                if info.tier == "open" else
                                "Rows stay on the node: only differentially private answers (and the other "
                                "privacy-safe channels of the dataset's agreement) within a grant."),
            "dcat:accessService": {"@id": f"{base_url}/v1"},
            "dct:format": {"@id": FILE_TYPE + "JSON", "@type": "dct:MediaTypeOrExtent"},
            "dct:license": licence,
            "dcat:mediaType": {"@id": "https://www.iana.org/assignments/media-types/application/json",
                               "@type": "dct:MediaType"},
        }],
    }
