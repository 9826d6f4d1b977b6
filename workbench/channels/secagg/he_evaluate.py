"""Encrypted model evaluation: the analyst's weights travel encrypted, only an aggregate metric decrypts.

How it works (``fed.dataset(...).evaluate(weights, intercept, y=..., x=[...], metric=..., epsilon=...)``):

1. Every per-row metric we support is a polynomial in the row's standardized
   values ``u = (1, x_1..x_p, y)`` (each clipped to its public bounds and mapped
   to [-1, 1], as in the regression): the squared residual of a linear model
   (``sse``) is a quadratic; the logistic loss ``softplus(z) - y z`` with
   ``z = b + w.x`` becomes one once ``softplus`` is replaced by a least-squares
   polynomial of even degree on ``[-R, R]``, where ``R`` is the largest ``|z|``
   the public bounds allow for these weights. Made homogeneous with the
   constant 1, the per-row metric is ``sum_b theta_b u^b`` over the monomials of
   :func:`workbench.channels.secagg.wire.eval_monomials`: the coefficients ``theta`` depend
   only on the model, so the total over rows is ``sum_b theta_b M_b`` with the
   node's moments ``M_b = sum_rows u^b``.
2. The kernel encrypts one CKKS vector per monomial, ``[theta_b * s, c_b]``
   (``c_b`` = scaled 1 for the all-ones monomial, else 0: slot 1 counts rows).
   Nothing else about the model leaves the kernel in the clear except the
   variables, the metric and the degree.
3. Each node computes its moments, adds DP noise *to the moments* (through its
   gate, charged), and multiplies each weight ciphertext by the plaintext
   ``[g_b, g_b]`` (``g_b`` = noisy moment / max_rows), adding up the products:
   a plaintext-times-ciphertext product per monomial, no rotations, no galois
   or relinearisation keys. Multiplying by a two-slot plaintext also zeroes
   every other slot, so whatever the analyst packed there does not survive.
   The node sends that one ciphertext to the aggregator, which adds the nodes'
   ciphertexts; the kernel decrypts two numbers (the metric total and the row
   count), rounds them and rescales.

Privacy guarantee: the noise is added to the node's moment vector, with
sensitivity from the public bounds (each monomial of standardized values lies
in [-1, 1]: one person moves each moment by at most ``max_contributions``),
epsilon split evenly over the moments. Everything the node releases, whatever
the weights, is a function of that noisy vector, hence epsilon-DP (in
``distributed`` mode: the summed vector over all parties). Noising the final
metric instead would not work: the node cannot see the weights, so it cannot
bound how much one row moves the metric (large weights would amplify a row
above any fixed noise). An analyst who crafts the weight ciphertexts can
recover linear combinations of the summed noisy moments (at most two per
session through the slots, more through the ciphertext noise, as there is no
circuit privacy); that is still post-processing of the DP release the nodes
charged for, and never a per-row value. Evaluating another model on the same
variables, metric, degree, epsilon and party set replays the stored noisy
moments, free.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from workbench.client.federation import FederatedDataset
from workbench.client.handles import register
from workbench.errors import InvalidQuery
from workbench.intervals import ratio_interval
from workbench.channels.secagg import he_params as params
from workbench.channels.secagg.wire import MAX_EVAL_MOMENTS, EncodingPlan, HEOp, NoiseMode, eval_monomials, plan


#: The worst-case |slot| the kernel aims for (the CKKS modulus wraps near 2.6e5).
TARGET_ABS = 1.0e4
#: Decrypted slots are rounded to this grid (far above CKKS error ~1e-7, far below the DP noise).
ROUND_GRID = 1e-4
DEFAULT_DEGREE = {"sse": 2, "logloss": 6}
LENGTH = 2  # slot 0: the metric total, slot 1: the row count

Poly = dict[tuple[int, ...], float]


# ---------------------------------------------------------------- polynomials in u = (1, x.., y)


def _mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for ea, ca in a.items():
        for eb, cb in b.items():
            e = tuple(i + j for i, j in zip(ea, eb))
            out[e] = out.get(e, 0.0) + ca * cb
    return out


def _add(a: Poly, b: Poly, scale: float = 1.0) -> Poly:
    out = dict(a)
    for e, c in b.items():
        out[e] = out.get(e, 0.0) + scale * c
    return out


def _linear(coefs: Sequence[float]) -> Poly:
    q = len(coefs)
    return {tuple(1 if i == j else 0 for i in range(q)): float(c) for j, c in enumerate(coefs) if c != 0.0}


def _homogenize(p: Poly, degree: int) -> Poly:
    out: Poly = {}
    for e, c in p.items():
        lifted = (e[0] + degree - sum(e),) + e[1:]
        out[lifted] = out.get(lifted, 0.0) + c
    return out


def default_degree(metric: str, regressors: int) -> int:
    """``sse``: 2. ``logloss``: the highest even degree (6, 4, 2) whose moment set fits :data:`MAX_EVAL_MOMENTS`.

    Measured on the demo (``readmitted ~ age + visits``, z in [-3, 2.5], public range |z| <= 8.7): mean
    per-row bias 0.20 / 0.040 / 0.005 at degree 2 / 4 / 6 (mean loss 0.51), DP half-width at epsilon 1
    0.9% / 1.7% of the total at degree 4 / 6.
    """
    if metric == "sse":
        return 2
    for degree in (6, 4, 2):
        probe = HEOp(kind="evaluate", y="y", x=[f"x{i}" for i in range(regressors)], metric="logloss", degree=degree)
        if len(eval_monomials(probe)) <= MAX_EVAL_MOMENTS:
            return degree
    return 2


def softplus_poly(radius: float, degree: int) -> tuple[np.ndarray, float]:
    """Power-series coefficients of a least-squares fit of ``log(1 + e^z)`` on ``[-R, R]``, and its max error."""
    from numpy.polynomial import Chebyshev, Polynomial

    radius = max(float(radius), 1e-3)
    z = np.linspace(-radius, radius, 4001)
    f = np.logaddexp(0.0, z)
    fit = Chebyshev.fit(z, f, degree, domain=[-radius, radius])
    power = fit.convert(kind=Polynomial, domain=[-radius, radius], window=[-radius, radius])
    coef = np.zeros(degree + 1)
    coef[:len(power.coef)] = power.coef
    err = float(np.abs(np.polynomial.polynomial.polyval(z, coef) - f).max())
    return coef, err


def metric_polynomial(op: HEOp, p: EncodingPlan, weights: Sequence[float], intercept: float) -> tuple[Poly, float]:
    """The per-row metric as a homogeneous polynomial in the standardized ``u``; and the approximation bound.

    ``p.centres``/``p.halves`` hold (y, x_1..x_p); ``x_j = c_j + h_j xi_j``, ``y = c_y + h_y eta``.
    """
    c_y, h_y = p.centres[0], p.halves[0]
    cs, hs = np.array(p.centres[1:]), np.array(p.halves[1:])
    w = np.asarray(weights, dtype=float)
    q = len(op.x) + 2
    offset = float(intercept) + float(w @ cs)
    z = [offset] + list(w * hs) + [0.0]  # z = b + w.x as a linear form in u
    y = [c_y] + [0.0] * len(op.x) + [h_y]
    degree = op.degree or 2
    if op.metric == "sse":
        residual = _add(_linear(y), _linear(z), -1.0)
        return _homogenize(_mul(residual, residual), degree), 0.0
    radius = abs(offset) + float(np.abs(w * hs).sum())
    coef, err = softplus_poly(radius, degree)
    zpoly = _linear(z)
    total: Poly = {tuple([0] * q): float(coef[0])}
    power: Poly = {tuple([0] * q): 1.0}
    for k in range(1, degree + 1):
        power = _mul(power, zpoly)
        total = _add(total, power, float(coef[k]))
    total = _add(total, _mul(_linear(y), zpoly), -1.0)
    return _homogenize(total, degree), err


def theta_vector(op: HEOp, poly: Poly) -> np.ndarray:
    """The polynomial's coefficients in the order of :func:`eval_monomials` (refuses foreign monomials)."""
    index = {m: i for i, m in enumerate(eval_monomials(op))}
    theta = np.zeros(len(index))
    for e, c in poly.items():
        if abs(c) < 1e-300:
            continue
        if e not in index:
            raise InvalidQuery(f"Internal: monomial {e} is outside the evaluation's moment set.", code="invalid_query")
        theta[index[e]] += c
    return theta


# ---------------------------------------------------------------- the node's half (worker entry points)


def _load_weights(payload: dict[str, Any]):
    ctx = params.load_public_context(
        params.b64decode(payload["context"], params.EVAL_MAX_CONTEXT_BYTES, "context"), params.EVAL_SCHEME)
    texts = payload["weights"]
    if len(texts) != int(payload["moments"]):
        raise InvalidQuery(f"The session carries {len(texts)} weight ciphertexts; this evaluation needs "
                           f"{payload['moments']} (one per moment).", code="bad_ciphertext")
    vectors = []
    for text in texts:
        vector = params.load_vector(ctx, params.b64decode(text, params.MAX_CIPHERTEXT_BYTES, "ciphertext"), LENGTH,
                                    params.EVAL_SCHEME)
        try:
            parts = vector.ciphertext()
            parts = parts if isinstance(parts, list) else [parts]
            shape = (len(parts), parts[0].scale, parts[0].coeff_modulus_size(), parts[0].size())
        except Exception:  # noqa: BLE001
            shape = None
        # One fresh ciphertext: 2 polynomials, at the top data level (2 primes), at the pinned scale.
        if shape != (1, 2.0 ** params.EVAL_SCALE_BITS, 2, 2):
            raise InvalidQuery("A weight ciphertext is not a fresh encryption under the pinned parameters "
                               "(scale 2**40, top level).", code="bad_ciphertext")
        vectors.append(vector)
    return ctx, vectors


def _combine(vectors, factors: list[float]):
    total = None
    for vector, g in zip(vectors, factors):
        g = float(g) if g != 0.0 else 1e-12  # an all-zero plaintext would make a transparent ciphertext
        try:
            term = vector * [g, g]  # also zeroes every slot but the first two
            total = term if total is None else total + term
        except Exception:  # noqa: BLE001 - wrong level/scale in a crafted ciphertext
            raise InvalidQuery("A weight ciphertext cannot be multiplied (wrong level or scale).",
                               code="bad_ciphertext") from None
    return total


def check_weights(payload: dict[str, Any]) -> dict:
    """Worker: vet the session's weight ciphertexts (count, size, slots, scale, level) before anything is charged."""
    _ctx, vectors = _load_weights(payload)
    _combine(vectors, [1.0] * len(vectors))
    return {"weights": len(vectors)}


def node_evaluate(payload: dict[str, Any]) -> dict:
    """Worker: ``sum_b Enc(theta_b) * [g_b, g_b]`` with ``g_b`` = this node's noisy moment / max_rows.

    Privacy guarantee: ``values`` are the node's noisy moments (see
    :mod:`workbench.channels.secagg.worker`); the product is post-processing of them.
    """
    _ctx, vectors = _load_weights(payload)
    max_rows = float(payload["max_rows"])
    factors = [int(v) / 10 ** int(d) / max_rows for v, d in zip(payload["values"], payload["decimals"])]
    if len(factors) != len(vectors):
        raise InvalidQuery("Moments and weights differ in number.", code="bad_ciphertext")
    raw = _combine(vectors, factors).serialize()
    return {"ciphertext": params.b64encode(raw), "sha256": params.sha256(raw), "bytes": len(raw)}


# ---------------------------------------------------------------- the analyst's half


def _noise_half_width(theta: np.ndarray, p: EncodingPlan, alpha: float, draws: int = 20_000) -> float:
    """|sum_b theta_b noise_b| stays below this with probability ~1 - alpha (Monte Carlo over the public scales)."""
    rng = np.random.default_rng(12345)
    scales = np.array(p.noise_scale) / 10.0 ** np.array(p.decimals)
    reps = 1 if p.mode == "distributed" else p.parties
    noise = sum(rng.laplace(0.0, scales, size=(draws, len(scales))) for _ in range(reps))
    return float(np.quantile(np.abs(noise @ theta), 1 - alpha))


def encode_weights(op: HEOp, p: EncodingPlan, theta: np.ndarray, max_rows: int) -> tuple[list[list[float]], float, float]:
    """Per monomial the two slots ``[theta_b * s, c_b]``; ``s`` and the count's scale keep every slot < TARGET_ABS."""
    per_moment = np.array(p.max_abs_per_node) / 10.0 ** np.array(p.decimals) / max_rows * p.parties
    bound = float(np.abs(theta) @ per_moment)
    if not math.isfinite(bound):
        raise InvalidQuery("The weights are not finite.", code="invalid_query")
    s = TARGET_ABS / bound if bound > 0 else 1.0
    count_index = 0  # the all-ones monomial comes first in eval_monomials
    s_count = TARGET_ABS / float(per_moment[count_index])
    slots = [[float(t * s), s_count if i == count_index else 0.0] for i, t in enumerate(theta)]
    return slots, s, s_count


def _weights(weights: Any, intercept: float | None, x: Sequence[str] | str | None) -> tuple[list[str], list[float],
                                                                                   float]:
    """The regressors, their weights and the intercept, from any form :func:`evaluate` accepts (checked)."""
    if isinstance(weights, pd.DataFrame):
        if "coef" not in weights.columns:
            raise InvalidQuery("A weights frame needs a 'coef' column.", code="invalid_query")
        coef = weights["coef"]
        if intercept is None and "intercept" in coef.index:
            intercept = float(coef["intercept"])
        weights = {k: float(v) for k, v in coef.items() if k != "intercept"}
    if isinstance(weights, dict):
        x = list(weights) if x is None else ([x] if isinstance(x, str) else list(x))
        missing = [c for c in x if c not in weights]
        if missing:
            raise InvalidQuery(f"No weight for {missing}.", code="invalid_query")
        w = [float(weights[c]) for c in x]
    else:
        if x is None:
            raise InvalidQuery("Pass x=[...] (the columns the weights belong to).", code="invalid_query")
        x = [x] if isinstance(x, str) else list(x)
        w = [float(v) for v in np.atleast_1d(np.asarray(weights, dtype=float))]
        if len(w) != len(x):
            raise InvalidQuery(f"{len(w)} weights for {len(x)} columns.", code="invalid_query")
    intercept = float(intercept or 0.0)
    if not all(math.isfinite(v) for v in w + [intercept]):
        raise InvalidQuery("The weights are not finite.", code="invalid_query")
    return list(x), w, intercept


def _evaluation_frame(decrypted: list[float], theta, local_plan: EncodingPlan, metric: str, max_rows: int, s: float,
                      s_count: float, k: int, approx: float, alpha: float) -> tuple[pd.DataFrame, float]:
    """Total, count and mean of the metric with ``1 - alpha`` intervals, from the decrypted moments (rounded first)."""
    # Round before anything else sees the value: no raw CKKS decryption leaves evaluate().
    rounded = [round(v / ROUND_GRID) * ROUND_GRID for v in decrypted]
    total = rounded[0] * max_rows / s  # theta is in metric units (the polynomial carries h_y)
    count = rounded[1] * max_rows / s_count
    half = _noise_half_width(theta, local_plan, alpha)
    slack = float(np.abs(theta) @ (0.5 / 10.0 ** np.array(local_plan.decimals))) * k * max_rows
    slack += ROUND_GRID * max_rows / s
    count_half = _noise_half_width(np.eye(len(theta))[0], local_plan, alpha) + 0.5 * k * max_rows / 10 ** local_plan.decimals[0]
    approx_total = approx * max(count, 0.0)
    mean = total / count if count > 0 else float("nan")
    lo_t, hi_t = total - half - slack, total + half + slack
    mean_lo, mean_hi = ratio_interval(lo_t, hi_t, max(count - count_half, 1.0), count + count_half)
    frame = pd.DataFrame({"statistic": [f"{metric} total", "count", f"{metric} mean"],
                          "estimate": [total, count, mean],
                          "lower": [lo_t, count - count_half, mean_lo],
                          "upper": [hi_t, count + count_half, mean_hi]})
    return frame, approx_total


def evaluate(fds: "FederatedDataset", weights: Any, intercept: float | None = None, *, y: str,
             x: Sequence[str] | str | None = None, metric: str = "sse", epsilon: float, degree: int | None = None,
             mode: NoiseMode = "distributed", aggregator: str | None = None, alpha: float = 0.05) -> pd.DataFrame:
    """The total (and mean) of a model's per-row loss over every node, computed on encrypted weights.

    ``weights``: a sequence aligned with ``x``, a ``{column: weight}`` dict, or
    the frame :func:`workbench.channels.secagg.kernel.linear_regression` returns (its
    ``coef`` column; the intercept comes from its ``intercept`` row).
    ``metric``: ``"sse"`` (linear model: sum of squared residuals) or
    ``"logloss"`` (logistic model ``P(y=1) = 1/(1+exp(-(b + w.x)))``: the sum of
    ``softplus(z) - y z`` with ``softplus`` replaced by a polynomial of
    ``degree`` fitted on the range of ``z`` the public bounds allow; default:
    6 if its moments fit (up to 2 regressors), else 4, else 2).

    Returns rows ``total``, ``count`` and ``mean`` (``estimate``, ``lower``,
    ``upper``: a ``1 - alpha`` interval for the DP noise and fixed-point
    rounding; ``attrs["approximation_bound_per_row"]`` bounds the polynomial's
    error for ``logloss``; clipping to the bounds is part of the metric).

    Privacy guarantee: each node charges ``epsilon`` once and adds noise to
    its moments (see :mod:`workbench.channels.secagg.he_evaluate`); only the encrypted
    aggregate reaches the aggregator and only the two summed numbers decrypt.
    Evaluating another model with the same variables, metric, degree, epsilon
    and nodes replays the same noisy moments for free.
    """
    from workbench.channels.secagg.kernel import run_he_session

    if metric not in DEFAULT_DEGREE:
        raise InvalidQuery("metric is 'sse' (linear model) or 'logloss' (logistic model).", code="invalid_query")
    x, w, intercept = _weights(weights, intercept, x)
    op = HEOp(kind="evaluate", y=y, x=list(x), metric=metric, degree=degree or default_degree(metric, len(x)))
    k = len(fds.handles)
    local_plan = plan(fds.schema, op, max(k, 1), epsilon, mode)
    max_rows = fds.schema.max_rows
    poly, approx = metric_polynomial(op, local_plan, w, intercept)
    theta = theta_vector(op, poly)
    slots, s, s_count = encode_weights(op, local_plan, theta, max_rows)
    context = params.new_eval_context()
    import tenseal as ts

    encrypted = [params.b64encode(ts.ckks_vector(context, v).serialize()) for v in slots]
    agg = run_he_session(fds, op, epsilon, mode=mode, aggregator=aggregator, context=context,
                         public=params.public_bytes(context), weights=encrypted, scheme=params.EVAL_SCHEME)
    raw = params.b64decode(agg.result_ciphertext, params.MAX_CIPHERTEXT_BYTES, "ciphertext")
    decrypted = ts.ckks_vector_from(context, raw).decrypt()[:LENGTH]
    frame, approx_total = _evaluation_frame(decrypted, theta, local_plan, metric, max_rows, s, s_count, k, approx,
                                            alpha)
    frame.attrs.update(agg.attrs())
    frame.attrs.update({"kind": "evaluate", "metric": metric, "degree": op.degree, "y": y, "x": list(x),
                        "alpha": alpha, "approximation_bound_per_row": approx,
                        "approximation_bound_total": approx_total, "moments": len(theta),
                        "params": params.eval_params_doc()})
    return frame


# ---------------------------------------------------------------- the handle's methods


class EvaluationMethods:
    """:class:`~workbench.FederatedDataset` methods of encrypted evaluation (registered on import)."""

    def evaluate(self, weights, intercept: float | None = None, *, y: str, x: list[str] | str | None = None,
                 metric: str = "sse", epsilon: float, **options):
        """A model's total and mean loss over every node, its weights encrypted (see :func:`workbench.channels.secagg.he_evaluate.evaluate`)."""
        self._whole("evaluate")
        return evaluate(self, weights, intercept, y=y, x=x, metric=metric, epsilon=epsilon, **options)


register(FederatedDataset, EvaluationMethods)
