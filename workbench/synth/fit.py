"""Worker side of DP synthesis: measure marginals with OpenDP, fit a graphical model, sample, report.

Runs inside a dedicated worker process (see :mod:`workbench.synth.jobs`), so
a native abort, a time-out or a cancellation kills only this fit.

Privacy guarantee: the only access to the data is one OpenDP
``contingency_table`` measurement (MST, AIM or Fixed from ``dp.mbi``) under
pure epsilon-DP (``dp.loss_of(epsilon=...)``, Laplace noise, delta = 0) at
the dataset's privacy unit (``contributions = max_contributions``, which the
node checks on every dataset version). Keys and bin cuts come from the public
metadata (:mod:`workbench.synth.domain`), so the set of possible output
values does not depend on the data. The synthetic rows are sampled from the
fitted model and the report compares them with the noisy marginals the
measurement released: both are post-processing of the DP release.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ComputationFailed
from ..protocol import DatasetInfo
from .domain import Plan, plan as make_plan
from .report import fidelity_figures
from .spec import SynthSpec

FIT_ITERS = 1000      # mirror-descent iterations of a model with multi-way marginals
# MST's budget: a quarter of epsilon on the one-way marginals (OpenDP's default is half: they only steer the
# choice of pairs, and the pairs measured afterwards cover every column again), then 90% of the rest on
# measuring the chosen pairs and 10% on choosing them. Measured at 30k x 8, epsilon 1 (docs/synthesis.md).
MST_ONEWAY_SPLIT = 0.25
MST_MEASURE_SPLIT = 0.9
ONEWAY_ITERS = 100    # ... of a model of one-way marginals only (independent columns: converges in a few dozen)


class Progress:
    """Writes ``{"pid", "phase", "progress"}`` to a file the node polls (throttled, atomic)."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self._last = 0.0
        self.write("starting", 0.0, force=True)

    def write(self, phase: str, fraction: float, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.3:
            return
        self._last = now
        tmp = self.path.with_suffix(".tmp")
        share = round(min(max(fraction, 0.0), 1.0), 4)
        tmp.write_text(json.dumps({"pid": os.getpid(), "phase": phase, "progress": share}))
        tmp.replace(self.path)


def _configure_jax(cache_dir: str | None) -> None:
    """Compile-time is most of a fit: cheap XLA optimisation and an on-disk compile cache per node."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    import jax

    if cache_dir:
        try:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            jax.config.update("jax_compilation_cache_dir", cache_dir)
            jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
            jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        except Exception:  # noqa: BLE001 - a cache is an optimisation only
            pass


def _scan(task: dict, info: DatasetInfo, columns: list[str]):
    """The checked, typed scan of the file the node priced and labelled; NaN reads as missing."""
    import polars as pl

    from ..node.data import scan_task

    _, lf = scan_task(task, columns)
    kinds = {c.name: c.type for c in info.columns}
    return lf.with_columns([pl.col(n).fill_nan(None) for n in columns if kinds[n] == "float"])


def _opendp():
    """The parts of OpenDP a fit uses, without ``opendp.prelude`` (which also imports scikit-learn: ~2 s of
    every fresh worker's start)."""
    from types import SimpleNamespace

    import opendp.extras.mbi as mbi
    import opendp.extras.polars as polars
    from opendp.context import Context, loss_of, unit_of
    from opendp.mod import OpenDPException, enable_features

    return SimpleNamespace(mbi=mbi, polars=polars, Context=Context, loss_of=loss_of, unit_of=unit_of,
                           OpenDPException=OpenDPException, enable_features=enable_features)


def _algorithm(dp, spec: SynthSpec, p: Plan, estimator):
    Count = dp.mbi.Count
    if spec.method == "mst":
        return dp.mbi.MST(estimator=estimator, oneway_split=MST_ONEWAY_SPLIT, measure_split=MST_MEASURE_SPLIT)
    if spec.method == "aim":
        rounds = spec.rounds or max(len(p.columns), 2)
        return dp.mbi.AIM(estimator=estimator, queries=[Count(c) for c in p.cliques], rounds=rounds)
    # fixed and independent: every public column is keyed, so no separate one-way release is needed
    return dp.mbi.Fixed(estimator=estimator, queries=[Count(c) for c in p.cliques], oneway="unkeyed")


def expected_fits(spec: SynthSpec, p: Plan) -> int:
    if spec.method == "mst":
        return 2
    if spec.method == "aim":
        return 1 + (spec.rounds or max(len(p.columns), 2))
    return 1


def run(task: dict) -> dict:
    """Fit and sample one DP synthesizer. ``task`` is plain data built by the node.

    Privacy guarantee: OpenDP's ``dp.mbi`` measures the marginals under pure epsilon-DP for the
    dataset's privacy unit; the model, the rows sampled from it and the report are post-processing.
    """
    progress = Progress(task.get("progress_path"))
    _configure_jax(task.get("jax_cache"))
    dp = _opendp()

    from . import _calibration, sampling

    dp.enable_features("contrib")
    _calibration.install()
    sampling.install_fast_projection()
    info = DatasetInfo.model_validate(task["info"])
    spec = SynthSpec.model_validate(task["spec"])
    epsilon = float(task["epsilon"])
    p = make_plan(info, spec)
    table = _measure(dp, task, info, spec, p, epsilon, progress)
    _check_domain(table, p)
    return _sample(table, info, spec, p, epsilon, progress)


def _estimator(spec: SynthSpec, p: Plan, progress: Progress):
    """mbi's mirror descent, reporting its progress (one bar across every model an algorithm fits)."""
    from mbi.estimation import mirror_descent

    from . import estimation

    fits = {"done": 0, "total": expected_fits(spec, p)}

    def estimator(domain, loss_fn, *, potentials=None):
        k = fits["done"]
        total = fits["total"]
        label = f"fitting model {min(k + 1, total)} of {total}" if total > 1 else "fitting model"
        oneway = all(len(m.clique) <= 1 for m in loss_fn) if isinstance(loss_fn, list) else False
        iters = ONEWAY_ITERS if oneway and spec.method != "independent" else FIT_ITERS

        def tick(_potentials, _state={"i": 0}):
            _state["i"] += 1
            progress.write(label, 0.05 + 0.85 * (k + _state["i"] / iters) / fits["total"])

        progress.write(label, 0.05 + 0.85 * k / fits["total"], force=True)
        known_total = None
        if isinstance(loss_fn, list):
            loss_fn, known_total = estimation.l2_loss(domain, loss_fn)
        model = mirror_descent(domain, loss_fn, known_total=known_total, potentials=potentials, iters=iters,
                               callback_fn=tick)
        fits["done"] = min(k + 1, fits["total"] - 1) if spec.method == "aim" else k + 1
        return model

    return estimator


def _measure(dp, task: dict, info: DatasetInfo, spec: SynthSpec, p: Plan, epsilon: float, progress: Progress):
    """The DP contingency table: OpenDP measures the marginals at ``epsilon`` and fits the model."""
    lf = _scan(task, info, p.columns)
    ctx = dp.Context.compositor(
        data=lf,
        privacy_unit=dp.unit_of(contributions=info.privacy_unit.max_contributions),
        privacy_loss=dp.loss_of(epsilon=epsilon),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=[], max_length=info.max_rows)],
    )
    keys = {n: d.keys for n, d in p.domains.items() if d.keys is not None}
    cuts = {n: d.cuts for n, d in p.domains.items() if d.cuts is not None}
    progress.write("measuring marginals", 0.02, force=True)
    try:
        algorithm = _algorithm(dp, spec, p, _estimator(spec, p, progress))
        query = ctx.query().contingency_table(keys=keys, cuts=cuts, algorithm=algorithm)
        return query.release()
    except dp.OpenDPException as exc:  # the message is about budgets and domains, never data values
        raise ComputationFailed(f"OpenDP refused the synthesis: {str(exc).strip().splitlines()[-1][:300]}",
                                code="computation_failed") from None


def _sample(table, info: DatasetInfo, spec: SynthSpec, p: Plan, epsilon: float, progress: Progress) -> dict:
    """Rows sampled from the fitted model, decoded to public values, and the fidelity report (post-processing)."""
    from . import sampling

    progress.write("sampling rows", 0.92, force=True)
    rng = np.random.default_rng()
    indices = sampling.synthetic_rows(table.model, int(spec.rows), rng)
    cells = {n: indices[n].astype(np.int64) for n in p.columns}
    data = {n: p.domains[n].decode(cells[n], rng) for n in p.columns}
    progress.write("writing the fidelity report", 0.97, force=True)
    report = fidelity_figures(p, cells, _released_marginals(table, p))
    report.update(method=spec.method, epsilon=epsilon, delta=0.0, rows=int(spec.rows), columns=p.columns,
                  dropped=p.dropped, privacy_unit=info.privacy_unit.model_dump(mode="json"),
                  mechanism="OpenDP dp.mbi " + {"mst": "MST", "aim": "AIM", "fixed": "Fixed",
                                                 "independent": "Fixed (one-way marginals only)"}[spec.method]
                  + ", pure epsilon-DP (Laplace noise)")
    rows = [list(r) for r in zip(*(data[n] for n in p.columns))]
    progress.write("done", 1.0, force=True)
    return {"table": {"columns": p.columns, "data": rows}, "report": report}


def _check_domain(table, p: Plan) -> None:
    """The fitted model must live on exactly the public cells we declared (keys + null, or bins)."""
    for n in p.columns:
        got = table.keys[n].to_list()
        d = p.domains[n]
        if d.keys is not None:
            ok = got[: len(d.keys)] == list(d.keys) and len(got) == len(d.keys) + 1 and got[-1] is None
        else:
            ok = len(got) == d.cells
        if not ok:
            raise ComputationFailed("The fitted model's domain does not match the public metadata.",
                                    code="computation_failed")


def _released_marginals(table, p: Plan) -> list[dict[str, Any]]:
    """The noisy marginals OpenDP released (full-identity measurements only), merged per clique by
    inverse variance. Post-processing of the DP release."""
    from opendp.extras.mbi._utilities import identity_query_precision

    by_clique: dict[tuple, list] = {}
    for m in table.marginals.flatten():
        clique = tuple(m.clique)
        if not clique or identity_query_precision(m) <= 0:
            continue
        by_clique.setdefault(clique, []).append(m)
    out = []
    for clique, ms in by_clique.items():
        if any(c not in p.domains for c in clique):
            continue
        weights = np.array([1.0 / float(m.stddev) ** 2 for m in ms])
        values = sum(w * np.asarray(m.noisy_measurement, dtype=float) for w, m in zip(weights, ms)) / weights.sum()
        std = float(np.sqrt(1.0 / weights.sum()))
        out.append({"columns": list(clique), "noisy": values.tolist(), "noise_std": std})
    out.sort(key=lambda m: (len(m["columns"]), [p.columns.index(c) for c in m["columns"]]))
    return out
