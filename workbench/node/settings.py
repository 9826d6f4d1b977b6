"""The owner's node configuration, read from a TOML file.

Everything in a dataset's entry except ``path`` and ``source`` is public metadata: it is
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


class TableSource(_Config):
    """A dataset that lives in a database engine: a PostgreSQL table or view, or a Spark table or Parquet lakehouse.

    ``url``: ``postgresql://host:port/db`` (no password: the node reads ``WORKBENCH_SOURCE_<NAME>_USER`` and
    ``WORKBENCH_SOURCE_<NAME>_PASSWORD`` from its environment, see docs/node.md) or a Spark master
    (``local[2]``, ``spark://host:7077``). ``table``: the table (or view) name; for Spark, ``parquet`` instead
    names a folder of Parquet files read by Spark. ``version``: the owner's label of the table's contents
    (bump it when the data changes: a new version stops replays of old answers). ``decimals``: the fixed-point
    precision of float sums (sums are computed as scaled integers in the engine).
    """

    url: str
    table: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62}){0,2}$")
    parquet: str | None = None
    version: str = Field("1", max_length=64)
    decimals: int = Field(3, ge=0, le=9)

    @model_validator(mode="after")
    def _check(self) -> "TableSource":
        from urllib.parse import urlsplit

        if (self.table is None) == (self.parquet is None):
            raise ValueError("a source needs exactly one of 'table' or 'parquet'")
        if self.kind == "postgres":
            if urlsplit(self.url).password is not None:
                raise ValueError("a source url must not hold a password: set WORKBENCH_SOURCE_<NAME>_PASSWORD")
            if self.parquet is not None:
                raise ValueError("a PostgreSQL source names a 'table'")
        return self

    def resolved(self, base: Path) -> "TableSource":
        """A local ``parquet`` folder relative to the config file's folder (URLs such as ``s3a://`` stay)."""
        if self.parquet is None or "://" in self.parquet:
            return self
        return self.model_copy(update={"parquet": str((base / self.parquet).resolve())})

    @property
    def kind(self) -> str:
        """``postgres`` or ``spark``, from the url's scheme."""
        scheme = self.url.split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in ("postgresql", "postgres"):
            return "postgres"
        if scheme.startswith("local") or scheme in ("spark", "sc", "yarn", "k8s"):
            return "spark"
        raise ValueError(f"unknown source url scheme {scheme!r} (postgresql://..., local[N], spark://...)")


class DatasetConfig(_Config):
    path: Path | None = None
    #: A dataset in PostgreSQL or Spark instead of a file (workbench.dp.pushdown); only DP queries use it.
    source: TableSource | None = None
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

    @model_validator(mode="after")
    def _one_place(self) -> "DatasetConfig":
        if (self.path is None) == (self.source is None):
            raise ValueError("a dataset needs exactly one of 'path' (a file or a folder of Parquet files) or 'source'")
        return self

    @property
    def file_format(self) -> str:
        if self.path is None:
            return "table"
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
        datasets = {
            name: ds.model_copy(update={"path": (base / ds.path).resolve()}) if ds.path is not None
            else ds.model_copy(update={"source": ds.source.resolved(base)})
            for name, ds in self.datasets.items()
        }
        return self.model_copy(update={"node": node, "datasets": datasets})

    @property
    def database_url(self) -> str:
        return self.node.database_url or f"sqlite:///{self.node.state_dir / 'node.sqlite'}"
