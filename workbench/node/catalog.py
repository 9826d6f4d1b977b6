"""The catalogue: each configured dataset's public metadata, file and version.

A dataset's *version* is the SHA-256 of its file (cached by size and mtime),
so a changed file is a new dataset version: replays of old answers stop and
new questions are charged. On each new version the node checks the data
against the public metadata it relies on (columns present; with an
identifier privacy unit, no person has more than ``max_contributions`` rows;
no more than ``max_rows`` rows) and refuses to serve a dataset that breaks them.
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

from ..errors import ComputationFailed, NotFound
from ..protocol import DatasetInfo
from .data import file_stamp, raw_scan
from .settings import DatasetConfig, NodeConfig

log = logging.getLogger(__name__)

REFRESH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    config: DatasetConfig
    info: DatasetInfo
    stamp: tuple[int, int] = (0, 0)  # (size, mtime_ns) of the file this version was read from

    @property
    def path(self) -> Path:
        return self.config.path

    @property
    def version(self) -> str:
        return self.info.version


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class Catalog:
    def __init__(self, config: NodeConfig):
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
                    stamp = file_stamp(ds.path)
                except OSError:
                    self._problems[name] = "data file missing"
                    self._entries.pop(name, None)
                    continue
                known = self._entries.get(name)
                if known is not None and known.stamp == stamp:
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
                self._entries[name] = DatasetEntry(name, ds, ds.public_info(name, version), stamp)
                changed = True
            if changed:
                self._save_cache()

    def _version(self, name: str, ds: DatasetConfig, stamp: tuple[int, int]) -> str:
        key = f"{ds.path}|{stamp[0]}|{stamp[1]}"
        cached = self._known.get(name)
        if cached and cached.get("key") == key:
            return cached["version"]
        version = "sha256:" + file_sha256(ds.path)[:32]
        self._known[name] = {"key": key, "version": version}
        return version

    def _check(self, name: str, ds: DatasetConfig) -> None:
        lf = raw_scan(ds.path, ds.file_format)
        present = set(lf.collect_schema().names())
        missing = [c for c in ds.columns if c not in present]
        if missing:
            raise ValueError(f"columns {missing} are in the config but not in the file")
        rows = lf.select(pl.len()).collect().item()
        if rows > ds.max_rows:
            raise ValueError(f"{rows} rows exceed the declared max_rows={ds.max_rows}")
        unit = ds.privacy_unit
        if unit.id_column:
            if unit.id_column not in present:
                raise ValueError(f"privacy unit column {unit.id_column!r} is not in the file")
            worst = lf.group_by(unit.id_column).len().select(pl.col("len").max()).collect().item() or 0
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
            raise ComputationFailed(f"Dataset '{name}' is temporarily unavailable; the owner has been told why.",
                                    code="dataset_unavailable")
        raise NotFound(f"Unknown dataset '{name}'.", code="unknown_dataset")

    def problems(self) -> dict[str, str]:
        return dict(self._problems)
