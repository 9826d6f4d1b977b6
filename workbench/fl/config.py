"""The optional ``[fl]`` table of a node's config: its SuperNode and which Flower apps it allows.

    [fl]
    superlink = "127.0.0.1:9092"     # Fleet API of `workbench fl superlink`; `node serve` then starts a SuperNode
    dataset = "patients"             # the dataset the SuperNode is bound to (default: the only private one)
    allowed_fabs = ["<sha256>"]      # other Flower apps (FAB sha256) the owner reviewed and allows
    root_certificates = "/etc/workbench/superlink-ca.pem"   # TLS to the SuperLink (required off loopback)
    auth_private_key = "/etc/workbench/supernode.key"       # SuperNode authentication (EC, NIST curve)
    auth_public_key = "/etc/workbench/supernode.key.pub"

The built-in Workbench app is always allowed: its FAB carries no code (it names
modules of the installed ``workbench`` package, which the owner installed).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["FLSection"]


class FLSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    superlink: str | None = Field(None, pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
    dataset: str | None = None
    allowed_fabs: list[str] = Field(default_factory=list)
    root_certificates: Path | None = None
    auth_private_key: Path | None = None
    auth_public_key: Path | None = None
    clientappio_port: int | None = Field(None, ge=1, le=65535)
