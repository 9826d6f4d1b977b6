"""Worker side of DP synthesis: measure marginals with OpenDP, fit a graphical model, sample, report.

Runs inside a dedicated worker process (see :mod:`workbench.channels.synth.jobs`), so
a native abort, a time-out or a cancellation kills only this fit.

Privacy guarantee: the only access to the data is one OpenDP compositor under
pure epsilon-DP (``dp.loss_of(epsilon=...)``, Laplace noise, delta = 0) at the
dataset's privacy unit (``contributions = max_contributions``, which the node
checks on every dataset version), split into two ``contingency_table``
queries, in this order: fine one-way marginals of the numeric columns (share
``SHAPE_SPLIT``; :mod:`workbench.channels.synth.shapes`) and the method's marginals
(MST, AIM or Fixed from ``dp.mbi``, share ``1 - SHAPE_SPLIT``), whose model also
fits the fine marginals summed into the public bins. Keys, bin cuts and fine cuts
come from the public metadata (:mod:`workbench.channels.synth.domain`), so the set of
possible output values does not depend on the data. The synthetic rows are
sampled from the fitted model and the fine marginals, and the report compares
them with the noisy marginals the queries released: all post-processing of the
DP release.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import ComputationFailed
from workbench.protocol import DatasetInfo
from workbench.channels.synth import shapes
from workbench.channels.synth.domain import Plan, plan as make_plan
from workbench.channels.synth.report import column_shapes, fidelity_figures, oneway_marginal
from workbench.channels.synth.wire import SynthSpec

FIT_ITERS = 1000      # mirror-descent iterations of a model with multi-way marginals
# MST's budget: a quarter of epsilon on the one-way marginals (OpenDP's default is half: they only steer the
# choice of pairs, and the pairs measured afterwards cover every column again), then 90% of the rest on
# measuring the chosen pairs and 10% on choosing them. Measured at 30k x 8, epsilon 1 (docs/synthesis.md).
MST_ONEWAY_SPLIT = 0.25
MST_MEASURE_SPLIT = 0.9
# AIM's one-way share of the model's budget (OpenDP's default: half; the fine marginals also inform the
# one-way marginals, and the rounds then get more: 2-way TVD 0.0142 vs 0.0161 at 30k x 8, docs/synthesis.md).
AIM_ONEWAY_SPLIT = 0.2
# The share of epsilon spent on fine one-way marginals of the numeric columns (the shapes inside the public
# bins; workbench.channels.synth.shapes). The method gets the rest, split as above. Measured in docs/synthesis.md.
SHAPE_SPLIT = 0.2


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


def _light_disjoint_set() -> None:
    """mbi and OpenDP's MST import only ``DisjointSet`` from ``scipy.cluster.hierarchy``, whose package also loads
    k-means and ``scipy.spatial`` (0.35-0.55 s of CPU of a ~4 s fit). In this dedicated process the two names
    are bound to light modules holding SciPy's own class, from the module that defines it (a test checks it is
    the class ``scipy.cluster.hierarchy`` exports). Does nothing if SciPy's cluster package is already loaded."""
    import types

    if "scipy.cluster" in sys.modules:
        return
    from scipy._lib._disjoint_set import DisjointSet

    cluster, hierarchy = types.ModuleType("scipy.cluster"), types.ModuleType("scipy.cluster.hierarchy")
    hierarchy.DisjointSet = DisjointSet  # type: ignore[attr-defined]
    cluster.hierarchy = hierarchy  # type: ignore[attr-defined]
    sys.modules["scipy.cluster"], sys.modules["scipy.cluster.hierarchy"] = cluster, hierarchy


def _scan(task: dict, info: DatasetInfo, columns: list[str]):
    """The checked, typed scan of the file the node priced and labelled; NaN reads as missing."""
    import polars as pl

    from workbench.node.data import scan_task

    _, lf = scan_task(task, columns)
    kinds = {c.name: c.type for c in info.columns}
    # One select, not with_columns: with with_columns, the fine marginals' cut() failed in Polars 1.36
    # ("conversion from str to i64 failed in column age"), the cast being re-applied after the cut.
    return lf.select([pl.col(n).fill_nan(None).alias(n) if kinds[n] == "float" else pl.col(n) for n in columns])


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
        return dp.mbi.AIM(estimator=estimator, queries=[Count(c) for c in p.cliques], rounds=rounds,
                          oneway_split=AIM_ONEWAY_SPLIT)
    # fixed and independent: every public column is keyed, so no separate one-way release is needed
    return dp.mbi.Fixed(estimator=estimator, queries=[Count(c) for c in p.cliques], oneway="unkeyed")


def _noise_aware_selection(shares: dict[str, float], columns: int, contributions: int) -> None:
    """MST picks a pair for its error above the noise it would be measured with (:mod:`.selection`)."""
    from workbench.channels.synth import selection

    pairs_epsilon = shares["model_epsilon"] * (1 - MST_ONEWAY_SPLIT) * MST_MEASURE_SPLIT
    selection.install(selection.expected_noise_per_cell(pairs_epsilon, max(columns - 1, 1), contributions))


def expected_fits(spec: SynthSpec, p: Plan) -> int:
    if spec.method == "mst":
        return 2
    if spec.method == "aim":
        return 1 + (spec.rounds or max(len(p.columns), 2))
    return 1


def run(task: dict) -> dict:
    """Fit and sample one DP synthesizer in a worker process of its own. ``task`` is plain data built by the
    node.

    Privacy guarantee: OpenDP's ``dp.mbi`` measures the marginals (and the fine one-way marginals of numeric
    columns) under pure epsilon-DP for the dataset's privacy unit, in one composition at the charged epsilon;
    the model, the rows sampled from it and the report are post-processing.
    """
    # dp.mbi's MST builds numpy domains through opendp.extras.numpy, which imports opendp.prelude and with it
    # scikit-learn (~2 s of CPU), which no fit uses. OpenDP imports it as an optional dependency, so marking it
    # absent in this (dedicated) process makes OpenDP skip it.
    sys.modules.setdefault("sklearn", None)  # type: ignore[arg-type]
    _light_disjoint_set()
    progress = Progress(task.get("progress_path"))
    _configure_jax(task.get("jax_cache"))
    dp = _opendp()

    from workbench.channels.synth import _calibration
    from workbench.channels.synth import sampling

    dp.enable_features("contrib")
    _calibration.install()
    sampling.install_fast_projection()
    info = DatasetInfo.model_validate(task["info"])
    spec = SynthSpec.model_validate(task["spec"])
    epsilon = float(task["epsilon"])
    p = make_plan(info, spec)
    fines = {n: f for n in p.columns if (f := shapes.fine_bins(p.domains[n])) is not None}
    shares = budget_shares(spec.method, epsilon, len(fines))
    if spec.method == "mst":
        _noise_aware_selection(shares, len(p.columns), info.privacy_unit.max_contributions)
    ctx = compositor(dp, _scan(task, info, p.columns), info, shares)
    progress.write("measuring marginals", 0.02, force=True)
    fine_noisy = _measure_shapes(dp, ctx, fines) if fines else {}
    coarse_from_fine = shapes.coarse_measurements(fines, fine_noisy)
    estimator = _estimator(spec, p, progress, coarse_from_fine)
    keys = {n: d.keys for n, d in p.domains.items() if d.keys is not None}
    cuts = {n: d.cuts for n, d in p.domains.items() if d.cuts is not None}
    table = _release(dp, ctx.query().contingency_table(keys=keys, cuts=cuts,
                                                       algorithm=_algorithm(dp, spec, p, estimator)))
    _check_domain(table, p)
    progress.write("sampling rows", 0.92, force=True)
    measured = _released_marginals([*table.marginals.flatten(), *coarse_from_fine], p)
    cells, fine_cells, data = _sample(table.model, p, int(spec.rows), fines, fine_noisy, measured)
    progress.write("writing the fidelity report", 0.97, force=True)
    report = fidelity_figures(p, cells, measured, column_shapes(p, cells, fines, fine_cells, fine_noisy, measured))
    report.update(method=spec.method, epsilon=epsilon, delta=0.0, rows=int(spec.rows), columns=p.columns,
                  dropped=p.dropped, privacy_unit=info.privacy_unit.model_dump(mode="json"),
                  budget=shares | {"shape_columns": list(fines)}, privacy=privacy_paragraph(spec, shares, fines),
                  mechanism=f"OpenDP dp.mbi {MECHANISMS[spec.method]}, pure epsilon-DP (Laplace noise)")
    rows = [list(r) for r in zip(*(data[n] for n in p.columns))]
    progress.write("done", 1.0, force=True)
    return {"table": {"columns": p.columns, "data": rows}, "report": report}


def _sample(model, p: Plan, rows: int, fines: dict, fine_noisy: dict, measured: list[dict]):
    """Cells from the model (restricted to cells the DP measurements support, tails tapered: :func:`_tapered`),
    then values: numeric columns with fine cells follow their fine counts inside each coarse cell, the others
    decode uniformly."""
    from workbench.channels.synth import sampling

    rng = np.random.default_rng()
    tails = {n: _tapered(model, n, fines[n], fine_noisy[n]) for n in fines}
    allowed = {n: weights for n, (_, weights) in tails.items()}
    allowed |= _null_cells_allowed(p, measured)
    indices = sampling.synthetic_rows(model, rows, rng, allowed=allowed)
    cells = {n: indices[n].astype(np.int64) for n in p.columns}
    data, fine_cells = {}, {}
    for n in p.columns:
        if n in fines:
            counts, weights = tails[n]
            shares = shapes.conditional_shares(fines[n], counts, weights[np.asarray(fines[n].parent)] > 0)
            fine_cells[n] = shapes.within_bin_cells(cells[n], fines[n], shares, rng)
            data[n] = fines[n].decode(fine_cells[n], rng).tolist()
        else:
            data[n] = p.domains[n].decode(cells[n], rng)
    return cells, fine_cells, data


def _tapered(model, name: str, fine: shapes.FineBins, fine_noisy: dict) -> tuple[np.ndarray, np.ndarray]:
    """A numeric column's fine counts and coarse weights (:func:`shapes.tapered`): its supported range, widened
    by the margin of public bins, with tails that taper off beyond the support. Post-processing."""
    from workbench.channels.synth import sampling

    noisy, std = fine_noisy["noisy"], fine_noisy["noise_std"]
    margin = shapes.margin_bins(noisy, std)
    support = shapes.supported(noisy, std, shapes.tail_stds(margin))
    wide = shapes.widened(fine, support, margin)
    return shapes.tapered(fine, noisy, support, wide, sampling.project(model, (name,)))


def _null_cells_allowed(p: Plan, measured: list[dict]) -> dict[str, np.ndarray]:
    """A categorical column's null cell (missing or unlisted values) is kept only when its released one-way
    count is at least ``NULL_NOISE_STDS`` noise stds (a Laplace draw exceeds 4 stds with probability 0.2%):
    otherwise the noise alone would put missing values into a column that may have none. Post-processing of
    the DP marginals."""
    out = {}
    for n in p.columns:
        d = p.domains[n]
        found = oneway_marginal(n, measured) if d.keys is not None else None
        if found is not None:
            noisy, std, _ = found
            allowed = np.ones(d.cells, dtype=bool)
            allowed[-1] = noisy[-1] >= shapes.NULL_NOISE_STDS * std
            out[n] = allowed
    return out


MECHANISMS = {"mst": "MST", "aim": "AIM", "fixed": "Fixed", "independent": "Fixed (one-way marginals only)"}


def budget_shares(method: str, epsilon: float, fine_columns: int) -> dict[str, float]:
    """How one fit's epsilon is split: ``model`` (the method's marginals) and ``shapes`` (the fine one-way
    marginals of ``fine_columns`` numeric columns, split evenly). Nothing goes to shapes when no column has
    fine cells. The two parts are one sequential composition: they add up to ``epsilon``."""
    share = SHAPE_SPLIT if fine_columns else 0.0
    return {"epsilon": epsilon, "model": 1.0 - share, "shapes": share,
            "model_epsilon": epsilon * (1.0 - share), "shapes_epsilon": epsilon * share,
            "shapes_epsilon_per_column": epsilon * share / fine_columns if fine_columns else 0.0}


def compositor(dp, data, info: DatasetInfo, shares: dict[str, float]):
    """The one OpenDP compositor of a fit: pure epsilon-DP at the dataset's privacy unit, ``shares["epsilon"]``
    in total, split into (when any column has fine cells) the shapes' query, asked first, and the model's
    query. OpenDP refuses any further query and any query over its share."""
    weights = [shares["shapes"], shares["model"]] if shares["shapes"] > 0 else [1.0]
    return dp.Context.compositor(
        data=data,
        privacy_unit=dp.unit_of(contributions=info.privacy_unit.max_contributions),
        privacy_loss=dp.loss_of(epsilon=shares["epsilon"]),
        split_by_weights=weights,
        margins=[dp.polars.Margin(by=[], max_length=info.max_rows)],
    )


def privacy_paragraph(spec: SynthSpec, shares: dict[str, float], fines: dict) -> str:
    """The release's privacy statement: one composition, its parts and what each bought."""
    eps = shares["epsilon"]
    text = (f"One sequential composition under pure epsilon-DP (Laplace noise, delta = 0), epsilon = {eps:g} in "
            f"total, charged once: {shares['model']:.0%} (epsilon = {shares['model_epsilon']:.4g}) on the "
            f"{MECHANISMS[spec.method]} marginals over the public bins")
    if fines:
        text += (f", {shares['shapes']:.0%} (epsilon = {shares['shapes_epsilon']:.4g}, "
                 f"{shares['shapes_epsilon_per_column']:.4g} per column) on fine one-way marginals of "
                 f"{', '.join(fines)} (the shape of values inside each public bin)")
    return text + ". Everything else (model, rows, report) is post-processing of these measurements."


def _release(dp, query):
    try:
        return query.release()
    except dp.OpenDPException as exc:  # the message is about budgets and domains, never data values
        raise ComputationFailed(f"OpenDP refused the synthesis: {str(exc).strip().splitlines()[-1][:300]}",
                                code="computation_failed") from None


def _measure_shapes(dp, ctx, fines: dict) -> dict[str, dict]:
    """The fine one-way marginal of every column in ``fines``: one OpenDP ``contingency_table`` query on the
    compositor's second share (Fixed workload of one-way counts, so the share is split evenly over the
    columns; the model it fits is the closed-form independent one, unused)."""
    from workbench.channels.synth import estimation

    algorithm = dp.mbi.Fixed(estimator=estimation.oneway_model, oneway="unkeyed",
                             queries=[dp.mbi.Count((n,)) for n in fines])
    query = ctx.query().select(list(fines)).contingency_table(
        keys={}, cuts={n: f.cuts for n, f in fines.items()}, algorithm=algorithm)
    table = _release(dp, query)
    out = {}
    for m in table.marginals.flatten():
        clique = tuple(m.clique)
        if len(clique) == 1 and clique[0] in fines and len(m.noisy_measurement) == fines[clique[0]].cells:
            out[clique[0]] = {"noisy": np.asarray(m.noisy_measurement, dtype=float), "noise_std": float(m.stddev)}
    if set(out) != set(fines):
        raise ComputationFailed("The fine marginals do not match the public bins.", code="computation_failed")
    return out


def _estimator(spec: SynthSpec, p: Plan, progress: Progress, extra: list):
    """The model fit OpenDP's dp.mbi calls: closed form for one-way models, mbi's mirror descent otherwise
    (in NumPy for identity measurements, :mod:`workbench.channels.synth.mirror_descent`; mbi's JAX code for others)."""
    from mbi.estimation import minimum_variance_unbiased_total, mirror_descent

    from workbench.channels.synth import estimation
    from workbench.channels.synth.mirror_descent import mirror_descent as numpy_mirror_descent

    fits = {"done": 0, "total": expected_fits(spec, p)}

    def estimator(domain, loss_fn, *, potentials=None):
        k = fits["done"]
        total = fits["total"]
        label = f"fitting model {min(k + 1, total)} of {total}" if total > 1 else "fitting model"
        fits["done"] = min(k + 1, total - 1) if spec.method == "aim" else k + 1
        if isinstance(loss_fn, list):
            loss_fn = [*loss_fn, *extra]
        if isinstance(loss_fn, list) and estimation.only_oneway(loss_fn):
            return estimation.oneway_model(domain, loss_fn)

        def tick(i):
            progress.write(label, 0.05 + 0.85 * (k + (i + 1) / FIT_ITERS) / total)

        progress.write(label, 0.05 + 0.85 * k / total, force=True)
        if isinstance(loss_fn, list) and (lipschitz := estimation.identity_lipschitz(domain, loss_fn)) is not None:
            known_total = float(minimum_variance_unbiased_total(loss_fn))
            return numpy_mirror_descent(domain, loss_fn, known_total, lipschitz, potentials=potentials,
                                        iters=FIT_ITERS, callback=tick)
        known_total = None
        if isinstance(loss_fn, list):
            loss_fn, known_total = estimation.l2_loss(domain, loss_fn)
        step = iter(range(FIT_ITERS))
        return mirror_descent(domain, loss_fn, known_total=known_total, potentials=potentials, iters=FIT_ITERS,
                              callback_fn=lambda _mu: tick(next(step, FIT_ITERS - 1)))

    return estimator


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


def _released_marginals(measurements: list, p: Plan) -> list[dict[str, Any]]:
    """The noisy marginals OpenDP released (full-identity measurements only, plus the public-bin sums of the
    fine marginals), merged per clique by inverse variance. Post-processing of the DP release."""
    from opendp.extras.mbi._utilities import identity_query_precision

    by_clique: dict[tuple, list] = {}
    for m in measurements:
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
        out.append({"columns": list(clique), "noisy": values.tolist(), "noise_std": std,
                    "shape": [p.domains[c].cells for c in clique]})
    out.sort(key=lambda m: (len(m["columns"]), [p.columns.index(c) for c in m["columns"]]))
    return out
