"""Worker side of SDV fitted on REAL rows: a non-DP release the owner must allow and then approve.

Privacy guarantee: none from DP. This runs only for datasets whose config sets
``allow_sdv_on_real = true``; its output is held in the owner's review queue
with SDMetrics privacy metrics (DCR baseline protection, NewRowSynthesis) and
leaves only after an owner approves it. Real values outside the public domain
are removed before fitting (unknown categories become missing, numbers are
clipped to the public bounds), so rare real categories cannot appear.
"""

from __future__ import annotations

import os
from pathlib import Path

from workbench.protocol import DatasetInfo
from workbench.channels.synth.worker import Progress, _scan
from workbench.channels.synth.wire import SDVSpec

PRIVACY_SUBSAMPLE = 1000


def run(task: dict) -> dict:
    progress = Progress(task.get("progress_path"))
    if task.get("sdv_home"):  # SDV writes its logs under $XDG_DATA_HOME/sdv: keep them in the node's state
        Path(task["sdv_home"]).mkdir(parents=True, exist_ok=True)
        os.environ["XDG_DATA_HOME"] = task["sdv_home"]
    import polars as pl

    from workbench.channels.synth.sdv_support import TABLE, make_synthesizer, sdv_metadata, sdv_metadata_dict

    info = DatasetInfo.model_validate(task["info"])
    spec = SDVSpec.model_validate(task["spec"])
    columns = task["columns"]
    progress.write("reading rows", 0.02, force=True)
    lf = _scan(task, info, columns)
    exprs = []
    for name in columns:
        col = info.column(name)
        e = pl.col(name)
        if col.type in ("int", "float"):
            e = e.clip(col.bounds[0], col.bounds[1])
        elif col.type != "bool":
            e = pl.when(e.is_in([str(c) for c in col.categories])).then(e).otherwise(None)
        exprs.append(e.alias(name))
    real = lf.select(exprs).collect().to_pandas()
    kwargs = {"epochs": spec.epochs} if spec.synthesizer != "GaussianCopula" else {}
    progress.write(f"fitting SDV {spec.synthesizer} on the real rows", 0.1, force=True)
    model = make_synthesizer(spec.synthesizer, sdv_metadata(info, columns), **kwargs)
    model.fit({TABLE: real})
    progress.write("sampling", 0.6, force=True)
    out = model.sample(num_rows=spec.rows)
    synthetic = out[TABLE] if isinstance(out, dict) else out
    progress.write("computing SDMetrics privacy metrics", 0.7, force=True)
    from sdmetrics.single_table import DCRBaselineProtection, NewRowSynthesis

    meta = sdv_metadata_dict(info, columns)
    n = min(PRIVACY_SUBSAMPLE, len(real), len(synthetic))
    dcr = DCRBaselineProtection.compute_breakdown(real, synthetic, metadata=meta, table_name=TABLE,
                                                  num_rows_subsample=n)
    new_rows = NewRowSynthesis.compute(real, synthetic, metadata=meta["tables"][TABLE],
                                       synthetic_sample_size=min(n, len(synthetic)))
    medians = dcr.get("median_DCR_to_real_data", {})
    metrics = {
        "dcr_baseline_protection": float(dcr["score"]),
        "median_dcr_synthetic": float(medians.get("synthetic_data", float("nan"))),
        "median_dcr_random_baseline": float(medians.get("random_data_baseline", float("nan"))),
        "new_row_synthesis": float(new_rows),
        "subsample_rows": int(n),
    }
    progress.write("done", 1.0, force=True)
    synthetic = synthetic[columns]
    rows = [[None if _missing(v) else _plain(v) for v in r] for r in synthetic.itertuples(index=False, name=None)]
    report = {
        "dp": False, "synthesizer": spec.synthesizer, "rows": spec.rows, "columns": columns,
        "privacy_metrics": metrics,
        "covered": "Not covered by DP: this SDV model was fitted on the real rows. The owner allowed SDV on "
                   "this dataset and approved this release after seeing the privacy metrics.",
        "not_covered": "Everything: a generative model fitted without DP can memorise rare rows. DCR baseline "
                       "protection near 1 and NewRowSynthesis near 1 are reassuring, not a guarantee.",
    }
    return {"table": {"columns": columns, "data": rows}, "report": report}


def _missing(v) -> bool:
    try:
        return v is None or v != v
    except Exception:  # noqa: BLE001
        return False


def _plain(v):
    if hasattr(v, "item"):
        return v.item()
    return v
