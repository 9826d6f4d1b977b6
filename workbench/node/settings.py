"""The owner's node configuration, read from a TOML file.

Everything in a dataset's entry except ``path`` is public metadata: it is
shown in the catalogue and is the only source of bounds, categories and keys
the DP channel uses. Nothing here is ever inferred from the data.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import InvalidQuery
from ..fl.config import FLSection
from ..protocol import Budget, ColumnInfo, DatasetInfo, DatasetName, Identifier, PrivacyUnit
from .agreement import AgreementConfig
from .consent import ConsentConfig
from .oidc import OIDCSection


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ColumnConfig(_Config):
    type: Literal["int", "float", "category", "bool", "string", "id"]
    description: str = ""
    bounds: tuple[float, float] | None = None
    categories: list[str | int | bool] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ColumnConfig":
        if self.bounds is not None and not self.bounds[0] < self.bounds[1]:
            raise ValueError("bounds must be [lower, upper] with lower < upper")
        if self.type == "bool" and self.categories is None:
            self.categories = [False, True]
        return self


class DatasetConfig(_Config):
    path: Path
    format: Literal["csv", "parquet"] | None = None
    tier: Literal["open", "private"] = "private"
    description: str = ""
    licence: str = ""
    max_rows: int = Field(10_000_000, ge=1)
    privacy_unit: PrivacyUnit = PrivacyUnit()
    budget: Budget = Budget(epsilon=10.0, delta=1e-6)
    columns: dict[Identifier, ColumnConfig]
    allow_sdv_on_real: bool = False
    #: Synthetic data (workbench.synth): most rows one synthesis may return, and its time limit.
    synth_max_rows: int = Field(100_000, ge=1)
    synth_timeout_s: float = Field(900.0, gt=0)
    #: The data subject's say (workbench.node.consent): a consent column or an opt-out list file.
    consent: ConsentConfig | None = None
    #: The sharing agreement (workbench.node.agreement): purposes, channels, licence, grantees, expiry, largest grant.
    agreement: AgreementConfig | None = None

    @model_validator(mode="after")
    def _consent_keyed(self) -> "DatasetConfig":
        if self.consent is not None and self.consent.opt_out_file is not None and not self.privacy_unit.id_column:
            raise ValueError("an opt-out list is keyed by the privacy-unit id: set privacy_unit.id_column")
        return self

    @property
    def file_format(self) -> str:
        return self.format or ("csv" if self.path.suffix.lower() == ".csv" else "parquet")

    def public_info(self, name: str, version: str) -> DatasetInfo:
        return DatasetInfo(
            name=name,
            tier=self.tier,
            description=self.description,
            licence=self.licence,
            version=version,
            max_rows=self.max_rows,
            privacy_unit=self.privacy_unit,
            budget=self.budget if self.tier == "private" else None,
            columns=[ColumnInfo(name=n, **c.model_dump()) for n, c in self.columns.items()],
            agreement=None if self.agreement is None else self.agreement.public(self.licence),
        )


class NodeSection(_Config):
    name: str = "workbench-node"
    state_dir: Path = Path("state")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8765
    max_body_bytes: int = Field(1_000_000, ge=1024)
    query_timeout_s: float = Field(120.0, gt=0)
    workers: int = Field(2, ge=1, le=32)
    token_ttl_days: float = Field(90.0, gt=0)
    max_epsilon_per_release: float = Field(10.0, gt=0)
    #: How many synthesis fits may run at once (each in its own worker process).
    synth_workers: int = Field(1, ge=1, le=16)
    #: FAPI 2.0: refuse plain bearer tokens; every token must be DPoP-bound (workbench.node.dpop).
    require_sender_constrained: bool = False
    #: The node's URL as clients see it (e.g. behind a TLS proxy): DPoP proofs' ``htu`` is checked against it.
    public_url: str | None = Field(None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")


class NodeConfig(_Config):
    node: NodeSection = NodeSection()
    datasets: dict[DatasetName, DatasetConfig] = Field(default_factory=dict)
    fl: FLSection = FLSection()  # optional [fl] table: SuperNode + allowed Flower apps (workbench.fl.config)
    oidc: OIDCSection | None = None  # optional [oidc] table: trust an external issuer (workbench.node.oidc)

    @classmethod
    def load(cls, path: str | Path) -> "NodeConfig":
        """Read a TOML config; relative paths are relative to the file."""
        path = Path(path).resolve()
        try:
            raw = tomllib.loads(path.read_text())
            config = cls.model_validate(raw)
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise InvalidQuery(f"Cannot read node config {path}: {exc}", code="invalid_config") from None
        return config.resolved(path.parent)

    def resolved(self, base: Path) -> "NodeConfig":
        node = self.node.model_copy(update={"state_dir": (base / self.node.state_dir).resolve()})
        datasets = {name: ds.model_copy(update={"path": (base / ds.path).resolve(), "consent": _resolved(ds, base)})
                    for name, ds in self.datasets.items()}
        return self.model_copy(update={"node": node, "datasets": datasets})

    @property
    def database_url(self) -> str:
        return self.node.database_url or f"sqlite:///{self.node.state_dir / 'node.sqlite'}"


def _resolved(ds: DatasetConfig, base: Path) -> ConsentConfig | None:
    if ds.consent is None or ds.consent.opt_out_file is None:
        return ds.consent
    return ds.consent.model_copy(update={"opt_out_file": (base / ds.consent.opt_out_file).resolve()})
