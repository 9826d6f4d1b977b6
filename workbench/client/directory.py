"""Find partners' nodes through a consortium's signed directory: ``wb.federation.from_directory(url, key)``.

The directory is verified against the consortium key you were given out of band
(see :mod:`workbench.directory`); then each member's DCAT catalogue can be read
and its node connected to. :meth:`ConsortiumDirectory.connect` also checks that
the node answering at the member's URL signs with a key the directory lists.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from ..directory import Directory, Member, verify
from ..errors import ConnectionFailed, InvalidQuery, NotAuthenticated
from .connection import Node, connect
from .federation import Federation
from .login import _check_url


class ConsortiumDirectory:
    """A verified directory: its members, their catalogues, connections to their nodes."""

    def __init__(self, directory: Directory, source: str):
        self.directory = directory
        self.source = source

    @property
    def members(self) -> list[Member]:
        return list(self.directory.members)

    def catalogue(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The member's DCAT-AP catalogue (JSON-LD), read without a token."""
        return _get_json(self.directory.member(name).catalogue_url, timeout)

    def connect(self, name: str, token: str | None = None, **options: Any) -> Node:
        """Connect to the member's node (the token as for :func:`workbench.connect`), checking its key."""
        member = self.directory.member(name)
        node = connect(member.url, token=token, **options)
        listed = {k.get("kid") for k in member.signing_keys}
        served = {k.get("kid") for k in node.request("GET", "/jwks").get("keys", [])}
        if listed and not listed & served:
            node.close()
            raise NotAuthenticated(f"The node at {member.url} does not sign with a key the directory lists for "
                                   f"{name}; it may not be who it claims.", code="directory_untrusted",
                                   details={"reason": "node_key"})
        return node

    def federation(self, tokens: dict[str, str], **options: Any) -> Federation:
        """A :class:`~workbench.Federation` of the members named in ``tokens`` (member name -> token)."""
        return Federation([self.connect(name, token, **options) for name, token in tokens.items()])

    def __repr__(self) -> str:
        names = ", ".join(m.name for m in self.directory.members)
        return f"<ConsortiumDirectory {self.directory.consortium}: {names}>"


def _get_json(url: str, timeout: float) -> Any:
    _check_url(url, "URL")
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"Cannot reach {url}: {exc}") from None
    if response.status_code != 200:
        raise ConnectionFailed(f"{url} answered HTTP {response.status_code}.")
    return response.json()


def _read_key(path: Path) -> dict[str, Any]:
    """The consortium's public JWK from a file (what ``workbench directory key`` printed)."""
    try:
        key = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidQuery(f"Cannot read the consortium key from {path}: {exc}", code="invalid_query") from None
    if not isinstance(key, dict):
        raise InvalidQuery(f"{path} does not hold a JWK (a JSON object).", code="invalid_query")
    return key


def from_directory(url: str, consortium_key: dict[str, Any] | str | Path, timeout: float = 30.0
                   ) -> ConsortiumDirectory:
    """Read the consortium directory at ``url`` and verify it against ``consortium_key`` (a public JWK, or a
    file holding one); refused (``directory_untrusted``) if another key signed it or it expired."""
    key = consortium_key if isinstance(consortium_key, dict) else _read_key(Path(consortium_key).expanduser())
    _check_url(url, "directory URL")
    try:
        response = httpx.get(url, timeout=timeout, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise ConnectionFailed(f"Cannot reach the directory at {url}: {exc}") from None
    if response.status_code != 200:
        raise ConnectionFailed(f"The directory at {url} answered HTTP {response.status_code}.")
    return ConsortiumDirectory(verify(response.text.strip(), key), url)
