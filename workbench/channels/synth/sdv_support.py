"""SDV metadata from the public schema, and SDV fitted on DP synthetic rows (client side).

Metadata is built from the catalogue (:class:`~workbench.protocol.DatasetInfo`),
never with ``Metadata.detect_from_dataframes`` on real data (auto-detection
would embed real minima, maxima and category lists).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from workbench.errors import InvalidQuery, NotSupported
from workbench.protocol import DatasetInfo

TABLE = "data"
SYNTHESIZERS = {"GaussianCopula": "GaussianCopulaSynthesizer", "CTGAN": "CTGANSynthesizer",
                "TVAE": "TVAESynthesizer", "CopulaGAN": "CopulaGANSynthesizer"}


def sdv_metadata_dict(info: DatasetInfo, columns: list[str]) -> dict[str, Any]:
    """SDV's single-table metadata as a dict, from public column types only."""
    cols: dict[str, Any] = {}
    for name in columns:
        col = info.column(name)
        if col is None:
            raise InvalidQuery(f"Unknown column '{name}'.", code="unknown_column")
        if col.type in ("int", "float"):
            cols[name] = {"sdtype": "numerical"}
        elif col.type == "bool":
            cols[name] = {"sdtype": "boolean"}
        elif col.type == "id":
            raise InvalidQuery(f"Column '{name}' is an identifier; it is not modelled.", code="invalid_query")
        else:
            cols[name] = {"sdtype": "categorical"}
    return {"tables": {TABLE: {"columns": cols}}, "METADATA_SPEC_VERSION": "V1"}


def sdv_metadata(info: DatasetInfo, columns: list[str]):
    try:
        from sdv.metadata import Metadata
    except ImportError:  # pragma: no cover - sdv is a dependency, but say what to install if missing
        raise NotSupported("SDV is not installed: pip install 'sdv==2.0.0'", code="not_supported") from None
    return Metadata.load_from_dict(sdv_metadata_dict(info, columns))


def make_synthesizer(name: str, metadata, **kwargs):
    if name not in SYNTHESIZERS:
        raise InvalidQuery(f"Unknown SDV synthesizer {name!r}; choose one of {', '.join(SYNTHESIZERS)}.",
                           code="invalid_query")
    import sdv.single_table as single

    return getattr(single, SYNTHESIZERS[name])(metadata, **kwargs)


class SDVModel:
    """An SDV synthesizer and what it was fitted on. ``sample(n)`` returns a pandas DataFrame."""

    def __init__(self, synthesizer, name: str, dp: bool, epsilon: float | None):
        self.synthesizer = synthesizer
        self.name = name
        self.dp = dp
        self.epsilon = epsilon

    def sample(self, rows: int) -> pd.DataFrame:
        out = self.synthesizer.sample(num_rows=int(rows))
        return out[TABLE] if isinstance(out, dict) else out

    def __repr__(self) -> str:
        what = f"DP synthetic rows (epsilon={self.epsilon:g}; still DP: post-processing)" if self.dp \
            else "non-DP rows"
        return f"<SDVModel {self.name} fitted on {what}>"


def fit_on_frame(frame: pd.DataFrame, info: DatasetInfo, synthesizer: str = "GaussianCopula", *,
                 dp: bool = True, epsilon: float | None = None, **kwargs) -> SDVModel:
    """Fit an SDV synthesizer on ``frame`` (DP synthetic rows: the result is post-processing, still DP)."""
    columns = [c for c in frame.columns]
    model = make_synthesizer(synthesizer, sdv_metadata(info, columns), **kwargs)
    model.fit({TABLE: frame})
    return SDVModel(model, synthesizer, dp, epsilon)
