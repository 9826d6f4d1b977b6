"""The catalogue: each configured dataset's public metadata, file and version.

A dataset's *version* is the SHA-256 of its file, or of every file of a
folder of Parquet files (cached by size and mtime), so a changed file is a
new dataset version: replays of old answers stop and new questions are
charged. On each new version the node checks the data against the public
metadata it relies on (columns present; every value readable as its declared
type, see :mod:`workbench.node.datacheck`; with an identifier privacy unit, no
person has more than ``max_contributions`` rows; no more than ``max_rows``
rows), in bounded memory (:mod:`workbench.node.datafiles`), and refuses to
serve a dataset that breaks them.

A dataset whose rows live in PostgreSQL or Spark (``source``) is versioned
by the owner's label (``source.version``) and checked for its columns; its
contribution bound is enforced inside every query (see
:mod:`workbench.channels.dp.pushdown`), so the node does not scan it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..errors import DatasetUnavailable, NotFound, NotSupported
from ..protocol import DatasetInfo
from . import consent, datafiles
from .data import check_stamp, file_stamp, raw_scan
from .datacheck import check_declared_types
from .settings import DatasetConfig, NodeConfig

__all__ = ["Catalog", "DatasetEntry", "check_stamp", "scan"]

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    config: DatasetConfig
    info: DatasetInfo
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) of the file this version was read from
    consent_stamp: tuple[int, int] | None = None  # the same for the opt-out list, if any

    @property
    def path(self) -> Path:
        """The dataset's file or folder; a table in PostgreSQL or Spark has none (only DP queries reach it)."""
        if self.config.path is None:
            raise NotSupported(f"Dataset '{self.name}' lives in a {self.config.source.kind} table: only DP queries "
                               "are supported on it.", code="not_supported")
        return self.config.path

    def require_rows(self) -> "DatasetEntry":
        """This entry, if its rows are on the node (a file or folder); a table source raises ``not_supported``.
        Channels that read rows themselves (synthesis, HE, SMPC, FL) call it before pricing anything."""
        _ = self.path
        return self

    @property
    def source(self):
        """The table source (:class:`~workbench.node.settings.TableSource`), or None for a file dataset."""
        return self.config.source

    @property
    def version(self) -> str:
        return self.info.version


def scan(config: DatasetConfig) -> pl.LazyFrame:
    """A lazy scan of a file dataset, one file or a folder of Parquet files (every row: callers that compute
    read through :mod:`workbench.node.data`, which applies the consent rule); a table source is refused."""
    if config.path is None:
        raise NotSupported(f"This dataset lives in a {config.source.kind} table: only DP queries are supported "
                           "on it.", code="not_supported")
    return raw_scan(config.path, config.file_format)


class Catalog:
    def __init__(self, config: NodeConfig):
        datafiles.buffered_reads()  # the checks below stream whole files through Polars in this process
        self.config = config
        self._lock = threading.Lock()
        self._entries: dict[str, DatasetEntry] = {}
        self._problems: dict[str, str] = {}
        self._cache_file = config.node.state_dir / "versions.json"
        self._known = self._load_cache()
        self._refreshed_at = float("-inf")
        self.refresh()

    def _load_cache(self) -> dict:
        try:
            return json.loads(self._cache_file.read_text())
        except (OSError, ValueError):
            return {}

    def refresh(self, force: bool = False) -> None:
        """Re-read any dataset whose file changed since it was last seen (looks at most every
        ``REFRESH_INTERVAL_S``; computations check the file they read is the version they were told)."""
        now = time.monotonic()
        if not force and now - self._refreshed_at < REFRESH_INTERVAL_S:
            return
        changed = False
        with self._lock:
            self._refreshed_at = now
            for name, ds in self.config.datasets.items():
                try:
                    stamp = file_stamp(ds.path) if ds.path is not None else (0, 0)
                    consent_stamp = consent.stamp(ds)
                except OSError:
                    self._problems[name] = "data file or opt-out list missing"
                    self._entries.pop(name, None)
                    continue
                known = self._entries.get(name)
                if known is not None and (known.stamp, known.consent_stamp) == (stamp, consent_stamp):
                    continue
                try:
                    version = self._version(name, ds, stamp)
                    self._check(name, ds)
                except Exception as exc:  # noqa: BLE001 - the owner sees why; analysts only see "unavailable"
                    log.error("dataset %s is unavailable: %s", name, exc)
                    self._problems[name] = str(exc)
                    self._entries.pop(name, None)
                    continue
                self._problems.pop(name, None)
                self._entries[name] = DatasetEntry(name, ds, ds.public_info(name, version), stamp, consent_stamp)
                changed = True
            if changed:
                self._save_cache()

    def _version(self, name: str, ds: DatasetConfig, stamp: tuple[int, int]) -> str:
        agreed = consent.fingerprint(ds)  # the opt-out list is part of the version: a new opt-out, a new version
        if ds.source is not None:
            from .sources import source_version

            return source_version(ds.source, agreed)
        key = f"{ds.path}|{stamp[0]}|{stamp[1]}|{agreed}"
        cached = self._known.get(name)
        if cached and cached.get("key") == key:
            return cached["version"]
        digest = datafiles.content_sha256(ds.path)
        if agreed:
            digest = hashlib.sha256(f"{digest}|{agreed}".encode()).hexdigest()
        version = "sha256:" + digest[:32]
        self._known[name] = {"key": key, "version": version}
        return version

    def _check(self, name: str, ds: DatasetConfig) -> None:
        if ds.source is not None:
            from .sources import check_columns

            check_columns(name, ds)
            return
        lf = scan(ds)
        present = set(lf.collect_schema().names())
        missing = [c for c in ds.columns if c not in present]
        if missing:
            raise ValueError(f"columns {missing} are in the config but not in the file")
        consent.check(ds, present)
        bad_types = check_declared_types(ds)
        if bad_types:
            raise ValueError("the file does not match its declared types: " + "; ".join(bad_types))
        rows = datafiles.row_count(lf)
        if rows > ds.max_rows:
            raise ValueError(f"{rows} rows exceed the declared max_rows={ds.max_rows}")
        unit = ds.privacy_unit
        if unit.id_column:
            if unit.id_column not in present:
                raise ValueError(f"privacy unit column {unit.id_column!r} is not in the file")
            worst = datafiles.most_rows_per_id(lf, unit.id_column, rows)
            if worst > unit.max_contributions:
                raise ValueError(f"an identifier has {worst} rows, more than max_contributions="
                                 f"{unit.max_contributions}")

    def _save_cache(self) -> None:
        try:
            self._cache_file.parent.mkdir(parents=True, exist_ok=True)
            self._cache_file.write_text(json.dumps(self._known))
        except OSError:
            pass

    # ---------------------------------------------------------------- lookups

    def entries(self) -> list[DatasetEntry]:
        self.refresh()
        return list(self._entries.values())

    def get(self, name: str) -> DatasetEntry:
        self.refresh()
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        if name in self._problems:
            raise DatasetUnavailable(f"Dataset '{name}' cannot be served as configured; the owner has been told "
                                     "why (workbench node check).")
        raise NotFound(f"Unknown dataset '{name}'.", code="unknown_dataset")

    def problems(self) -> dict[str, str]:
        return dict(self._problems)
