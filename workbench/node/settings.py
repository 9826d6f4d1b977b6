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


class CodeJobSettings(BaseModel):
    """A dataset's code-job settings (``[datasets.<name>.code_jobs]``; :mod:`workbench.channels.jobs`): public
    metadata like the rest of a dataset's entry, so analysts see the limits and disclosure thresholds."""

    model_config = ConfigDict(extra="forbid")

    #: Whether analysts may submit code to run beside this dataset (every job still needs an owner's approval).
    enabled: bool = True
    #: Disclosure checks: a table cell (a group of input rows) smaller than this is flagged.
    min_cell_count: int = Field(10, ge=1)
    #: Dominance rule (n, k): a cell whose ``dominance_n`` largest contributors make up more than
    #: ``dominance_k`` of its total is flagged.
    dominance_n: int = Field(2, ge=1)
    dominance_k: float = Field(0.85, gt=0, le=1)
    #: Sandbox limits.
    cpu_seconds: int = Field(300, ge=1)
    memory_mb: int = Field(2048, ge=256)
    wall_seconds: float = Field(600.0, gt=0)
    processes: int = Field(256, ge=16)
    work_mb: int = Field(512, ge=16)
    max_output_mb: float = Field(5.0, gt=0)
    max_outputs: int = Field(10, ge=1, le=50)
    #: Most epsilon one job may spend through its DP channel (the owner approves it with the code).
    max_dp_epsilon: float = Field(1.0, ge=0)


class DatasetConfig(_Config):
    path: Path | None = None
    #: A dataset in PostgreSQL or Spark instead of a file (workbench.channels.dp.pushdown); only DP queries use it.
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
    #: Synthetic data (workbench.channels.synth): most rows one synthesis may return, and its time limit.
    synth_max_rows: int = Field(100_000, ge=1)
    synth_timeout_s: float = Field(900.0, gt=0)
    #: Code jobs (workbench.channels.jobs): sandbox limits and disclosure thresholds.
    code_jobs: CodeJobSettings = CodeJobSettings()
    #: The data subject's say (workbench.node.consent): a consent column or an opt-out list file.
    consent: ConsentConfig | None = None
    #: The sharing agreement (workbench.node.agreement): purposes, channels, licence, grantees, expiry, largest grant.
    agreement: AgreementConfig | None = None

    @model_validator(mode="after")
    def _consent_keyed(self) -> "DatasetConfig":
        if self.consent is not None and self.consent.opt_out_file is not None and not self.privacy_unit.id_column:
            raise ValueError("an opt-out list is keyed by the privacy-unit id: set privacy_unit.id_column")
        return self

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
    copy_timeout_s: float = Field(3600.0, gt=0)  # a file's columnar copy, written before its first release is charged
    workers: int = Field(2, ge=1, le=32)
    token_ttl_days: float = Field(90.0, gt=0)
    max_epsilon_per_release: float = Field(10.0, gt=0)
    #: How many synthesis fits may run at once (each in its own worker process).
    synth_workers: int = Field(1, ge=1, le=16)
    #: Fair share (issue 16): heavy requests one user may have running or queued (more get 429 + Retry-After),
    #: contributions one user may have waiting on other parties, and the low-priority workers that
    #: calibrate free previews (never a paid release's worker).
    per_user_compute: int = Field(8, ge=1, le=1000)
    per_user_sessions: int = Field(2, ge=1, le=1000)
    #: Synthesis jobs one user may have queued or running (more get 429; slots go round-robin by user).
    per_user_synth_jobs: int = Field(4, ge=1, le=1000)
    preview_workers: int = Field(1, ge=1, le=16)
    #: Failed authentications: one record per source per window, then a count for the window.
    auth_failure_window_s: float = Field(60.0, gt=0)
    #: FAPI 2.0: refuse plain bearer tokens; every token must be DPoP-bound (workbench.node.dpop).
    require_sender_constrained: bool = False
    #: The node's URL as clients see it (e.g. behind a TLS proxy): DPoP proofs' ``htu`` is checked against it.
    public_url: str | None = Field(None, pattern=r"^https?://[^/?#]+(/[^?#]*)?$")


class FLSection(_Config):
    """The optional ``[fl]`` table: this node's SuperNode and which Flower apps it allows.

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

    superlink: str | None = Field(None, pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
    dataset: str | None = None
    allowed_fabs: list[str] = Field(default_factory=list)
    root_certificates: Path | None = None
    auth_private_key: Path | None = None
    auth_public_key: Path | None = None
    clientappio_port: int | None = Field(None, ge=1, le=65535)


class NodeConfig(_Config):
    node: NodeSection = NodeSection()
    datasets: dict[DatasetName, DatasetConfig] = Field(default_factory=dict)
    fl: FLSection = FLSection()  # optional [fl] table: SuperNode + allowed Flower apps
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
            name: ds.model_copy(update={"path": (base / ds.path).resolve(), "consent": _resolved(ds, base)})
            if ds.path is not None else ds.model_copy(update={"source": ds.source.resolved(base)})
            for name, ds in self.datasets.items()
        }
        return self.model_copy(update={"node": node, "datasets": datasets})

    @property
    def database_url(self) -> str:
        return self.node.database_url or f"sqlite:///{self.node.state_dir / 'node.sqlite'}"


def _resolved(ds: DatasetConfig, base: Path) -> ConsentConfig | None:
    if ds.consent is None or ds.consent.opt_out_file is None:
        return ds.consent
    return ds.consent.model_copy(update={"opt_out_file": (base / ds.consent.opt_out_file).resolve()})
