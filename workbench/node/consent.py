"""The data subject's say: rows without consent are removed before any computation, in every channel.

A dataset's ``[datasets.NAME.consent]`` table names either

- ``column``: a boolean column of the data file; only rows where it is true
  are used (false and missing both mean "no"), or
- ``opt_out_file``: a text file beside the config, one privacy-unit id per
  line (``#`` starts a comment); every row of a listed person is removed.
  Needs an identifier privacy unit (``privacy_unit.id_column``).

:func:`consenting` is the one filter; every read site (open rows, the DP
engine and its columnar copy, synthesis, HE/SMPC, federated learning, code
jobs) calls it on the raw scan before selecting columns. Workers get the
rule as :func:`consent_spec`, a plain dict in their task.

Privacy guarantee: the filter depends only on each person's own consent
(their rows' consent value or their presence in the list), so a person who
withheld consent has no influence at all on any released answer, and the DP
guarantees for everyone else are unchanged (removing rows only lowers the
row count under the public ``max_rows`` and each person's contributions
under ``max_contributions``). The opt-out list's fingerprint is part of the
dataset version, so a new opt-out makes a new version: cached copies are
rebuilt and earlier answers stop being replayed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, ConfigDict, model_validator

from ..protocol import Identifier


class ConsentConfig(BaseModel):
    """Where a dataset's consent comes from: exactly one of ``column`` and ``opt_out_file``."""

    model_config = ConfigDict(extra="forbid")

    column: Identifier | None = None
    opt_out_file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ConsentConfig":
        if (self.column is None) == (self.opt_out_file is None):
            raise ValueError("consent needs exactly one of 'column' and 'opt_out_file'")
        return self


def consent_spec(config: Any) -> dict | None:
    """The consent rule of a dataset config as a plain dict for a worker's task (None: no rule)."""
    consent: ConsentConfig | None = getattr(config, "consent", None)
    if consent is None:
        return None
    spec: dict[str, Any] = {"column": consent.column, "opt_out_file": None, "id_column": None, "stamp": None}
    if consent.opt_out_file is not None:
        path = Path(consent.opt_out_file)
        spec.update(opt_out_file=str(path), id_column=config.privacy_unit.id_column, stamp=_stamp(path))
    return spec


def consenting(lf: pl.LazyFrame, config: Any) -> pl.LazyFrame:
    """``lf`` without the rows whose person did not consent; ``config``: a dataset config or a :func:`consent_spec`."""
    spec = config if isinstance(config, dict) or config is None else consent_spec(config)
    if spec is None:
        return lf
    if spec["column"] is not None:
        return lf.filter(pl.col(spec["column"]).cast(pl.Boolean, strict=False).fill_null(False))
    opted_out = read_opt_outs(spec["opt_out_file"])
    return lf.filter(~pl.col(spec["id_column"]).cast(pl.String).is_in(opted_out))


def read_opt_outs(path: str | Path) -> list[str]:
    """The ids listed in an opt-out file (blank lines and ``#`` comments ignored). A missing file is an error."""
    ids = []
    for line in Path(path).read_text().splitlines():
        value = line.split("#", 1)[0].strip()
        if value:
            ids.append(value)
    return ids


def fingerprint(config: Any) -> str:
    """A short hash of the consent rule and the opt-out list ('' without a rule): part of the dataset version."""
    consent: ConsentConfig | None = getattr(config, "consent", None)
    if consent is None:
        return ""
    digest = hashlib.sha256(f"column={consent.column}".encode())
    if consent.opt_out_file is not None:
        digest.update(Path(consent.opt_out_file).read_bytes())
    return digest.hexdigest()[:16]


def stamp(config: Any) -> tuple[int, int] | None:
    """(size, mtime_ns) of the opt-out file, so the catalogue notices a new opt-out (None: no file)."""
    consent: ConsentConfig | None = getattr(config, "consent", None)
    if consent is None or consent.opt_out_file is None:
        return None
    return _stamp(Path(consent.opt_out_file))


def check(config: Any, present: set[str]) -> None:
    """Refuse a dataset whose consent rule cannot be applied (the owner sees why; analysts see 'unavailable')."""
    consent: ConsentConfig | None = getattr(config, "consent", None)
    if consent is None:
        return
    if consent.column is not None and consent.column not in present:
        raise ValueError(f"consent column {consent.column!r} is not in the file")
    if consent.opt_out_file is not None:
        read_opt_outs(consent.opt_out_file)


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns)
