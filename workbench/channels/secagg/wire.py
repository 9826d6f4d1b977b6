"""HE wire models and the encoding plan, computed from public metadata only.

An :class:`HEOp` says what each node contributes: a vector of column sums
(``sum``), the sufficient statistics of a linear regression (``linreg``), or
the moments an encrypted model evaluation needs (``evaluate``, see
:mod:`workbench.channels.secagg.he_evaluate`).
:func:`plan` turns it, the dataset's public metadata, the number of parties,
epsilon and the noise mode into an :class:`EncodingPlan`: the slot layout, the
fixed-point scale of every slot, its sensitivity, its noise scale and the
largest value a node may contribute. Node and client compute the same plan;
the node refuses a plan whose total could wrap modulo the plain modulus.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

from pydantic import Field

from workbench.errors import InvalidQuery
from workbench.protocol import ContributionReceipt, DatasetInfo, DatasetName, Finite, Identifier, RequestId, Strict
from workbench.channels.secagg.he_params import MAX_ABS_TOTAL

#: Tail multiple for the per-node clamp: a noise share beyond 60 scales has probability < e^-60.
NOISE_TAIL = 60.0
MAX_PARTIES = 64
MAX_REGRESSORS = 12
MAX_SUM_COLUMNS = 64
#: Encrypted evaluation: one weight ciphertext (~235 KB) per moment, so the moment set is capped.
MAX_EVAL_MOMENTS = 48


class HEOp(Strict):
    """What every node computes: ``sum`` of ``columns`` (+ row count), ``linreg`` of ``y`` on ``x``, or the
    moments of ``(1, x, y)`` that ``evaluate`` needs for ``metric`` (a polynomial of ``degree`` per row)."""

    kind: Literal["sum", "linreg", "evaluate"]
    columns: list[Identifier] = Field(default_factory=list, max_length=MAX_SUM_COLUMNS)
    count: bool = False
    y: Identifier | None = None
    x: list[Identifier] = Field(default_factory=list, max_length=MAX_REGRESSORS)
    metric: Literal["sse", "logloss"] | None = None
    degree: int | None = Field(None, ge=2, le=6)


NoiseMode = Literal["distributed", "conservative"]


Protocol = Literal["he", "smpc"]


class SessionCreate(Strict):
    """The analyst opens a session at the aggregator (the public context rides along; none for SMPC).

    For ``op.kind == "evaluate"``, ``weights`` holds one CKKS ciphertext per
    moment (the analyst's encrypted model, see :mod:`workbench.channels.secagg.he_evaluate`).
    """

    dataset: DatasetName
    op: HEOp
    epsilon: Finite = Field(gt=0.0, le=100.0)
    mode: NoiseMode = "distributed"
    parties: list[str] = Field(min_length=1, max_length=MAX_PARTIES)
    context: str = Field("", max_length=25_000_000)  # the body cap bounds it; 400/450 KB decoded, checked first
    protocol: Protocol = "he"
    weights: list[str] = Field(default_factory=list, max_length=MAX_EVAL_MOMENTS)


class SessionCreated(Strict):
    session_id: str
    result_token: str
    aggregator: str
    parties: list[str]
    context_sha256: str
    expires_in_s: float


class SessionSpec(Strict):
    """What a node reads from the aggregator before it contributes."""

    session_id: str
    aggregator: str
    dataset: DatasetName
    op: HEOp
    epsilon: float
    mode: NoiseMode
    parties: list[str]
    you: str
    context: str
    context_sha256: str
    protocol: Protocol = "he"
    weights: list[str] = Field(default_factory=list, max_length=MAX_EVAL_MOMENTS)


class Contribution(Strict):
    ciphertext: str = Field(max_length=500_000)


class SessionResult(Strict):
    session_id: str
    parties: list[str]
    ciphertext: str
    sha256: str
    bytes: int


class ContributeRequest(Strict):
    """The analyst asks a node to contribute to a session at a (node-trusted) aggregator."""

    aggregator_url: str = Field(max_length=300)
    session_id: str = Field(pattern=r"^[A-Za-z0-9_\-]{16,64}$")
    grant_id: int | None = Field(None, ge=1)
    request_id: RequestId | None = None


class ContributeResponse(ContributionReceipt):
    """What the node tells the analyst: never a value, only that its ciphertext went to the aggregator."""

    ciphertext_sha256: str
    ciphertext_bytes: int


class HEPreviewRequest(Strict):
    op: HEOp
    epsilon: Finite = Field(gt=0.0, le=100.0)
    mode: NoiseMode = "distributed"
    parties: int = Field(ge=1, le=MAX_PARTIES)
    grant_id: int | None = Field(None, ge=1)


class HEPreview(Strict):
    dataset: str
    dataset_version: str
    epsilon: float
    grant_id: int | None
    epsilon_left_before: float | None
    slots: list[str]
    decimals: list[int]
    noise_scale: list[float]
    max_abs_per_node: list[int]
    params: dict


class AggregatorEntry(Strict):
    url: str = Field(max_length=300, pattern=r"^https?://[A-Za-z0-9.\-_:\[\]]+(/[A-Za-z0-9._\-/]*)?$")
    token: str = Field(min_length=16, max_length=200)


# ---------------------------------------------------------------- the encoding plan


class EncodingPlan(Strict):
    """Slot layout and fixed-point encoding of one op (public: metadata, op, parties, epsilon, mode only).

    Slot ``j`` carries ``round(value_j * 10**decimals[j])`` summed over rows; one
    person changes it by at most ``sensitivity[j]`` (integer units). Epsilon is
    split evenly over the slots; the discrete Laplace noise on the *total* has
    scale ``noise_scale[j] = sensitivity[j] * slots / epsilon``.
    """

    slots: list[str]
    decimals: list[int]
    sensitivity: list[int]
    noise_scale: list[float]
    max_abs_per_node: list[int]
    parties: int
    mode: NoiseMode
    epsilon: float
    # linreg: the public centring/scaling used (mid, half-range) per variable, y first.
    centres: list[float] = Field(default_factory=list)
    halves: list[float] = Field(default_factory=list)


def _numeric(info: DatasetInfo, name: str, allow_bool: bool = False):
    col = info.column(name)
    if col is None:
        raise InvalidQuery(f"Unknown column '{name}' in dataset '{info.name}'.", code="unknown_column")
    if allow_bool and col.type == "bool":
        return col.model_copy(update={"bounds": (0.0, 1.0)})
    if col.type not in ("int", "float"):
        raise InvalidQuery(f"Column '{name}' is {col.type}; secure sums and regression need numeric columns.",
                           code="wrong_type")
    if col.bounds is None:
        raise InvalidQuery(f"Column '{name}' has no public bounds; the owner must declare them.", code="bad_bounds")
    return col


def eval_variables(op: HEOp) -> list[str]:
    """The variables of an evaluation's moments: the constant 1, the regressors, then y."""
    return ["1"] + list(op.x) + [op.y or "y"]


def eval_monomials(op: HEOp) -> list[tuple[int, ...]]:
    """The exponent tuples (over :func:`eval_variables`, total degree ``op.degree``) a node sums for ``evaluate``.

    ``sse``: every monomial of degree 2 (the per-row squared residual is a
    quadratic in ``(1, x, y)``). ``logloss``: every monomial of degree ``D`` in
    ``(1, x)`` (for the polynomial of ``z = b + w.x``), plus ``y`` times ``1`` or
    one ``x_j`` (for ``-y z``). The all-ones monomial (first) counts the rows.
    """
    q = len(op.x) + 2
    degree = op.degree or 2
    out = []
    for combo in itertools.combinations_with_replacement(range(q), degree):
        exps = tuple(combo.count(i) for i in range(q))
        if op.metric == "logloss":
            y_exp, x_deg = exps[-1], sum(exps[1:-1])
            if y_exp > 1 or (y_exp == 1 and x_deg > 1):
                continue
        out.append(exps)
    return out


def monomial_name(exps: tuple[int, ...], names: list[str]) -> str:
    parts = [n if e == 1 else f"{n}^{e}" for n, e in zip(names[1:], exps[1:]) if e]
    return "*".join(parts) if parts else "1"


def linreg_slots(x: list[str], y: str) -> list[str]:
    """Slot names: upper triangle of Z'Z (intercept first), then Z'y, then y'y."""
    names = ["1"] + list(x)
    slots = [f"xx[{names[i]},{names[j]}]" for i in range(len(names)) for j in range(i, len(names))]
    slots += [f"xy[{n}]" for n in names] + [f"yy[{y}]"]
    return slots


def plan(info: DatasetInfo, op: HEOp, parties: int, epsilon: float, mode: NoiseMode) -> EncodingPlan:
    """The encoding plan; raises ``would_overflow`` if the largest possible total could wrap."""
    if not 1 <= parties <= MAX_PARTIES:
        raise InvalidQuery(f"A session has 1 to {MAX_PARTIES} parties.", code="invalid_query")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise InvalidQuery("epsilon must be a positive number.", code="bad_epsilon")
    c = info.privacy_unit.max_contributions
    rows = info.max_rows
    if op.kind == "sum":
        slots, magnitudes, is_int = _sum_layout(info, op)
        centres: list[float] = []
        halves: list[float] = []
    elif op.kind == "evaluate":
        _, slots, centres, halves = _evaluate_layout(info, op)
        magnitudes = [1.0] * len(slots)  # every monomial of standardized values lies in [-1, 1]
        is_int = [False] * len(slots)
    else:
        slots, centres, halves = _linreg_layout(info, op)
        magnitudes = [1.0] * len(slots)  # every standardized product lies in [-1, 1]
        is_int = [False] * len(slots)
    m = len(slots)
    decimals = []
    for mag, integer in zip(magnitudes, is_int):
        # Integers are exact; reals get ~6 significant digits per row, fewer if the total could wrap.
        d = 0 if integer else max(0, min(9, 6 - int(math.floor(math.log10(mag))) if mag > 0 else 6))
        while True:
            sens = c * int(math.ceil(mag * 10 ** d))
            scale = max(sens, 1) * m / epsilon
            per_node = rows * sens + NOISE_TAIL * scale
            if parties * per_node < MAX_ABS_TOTAL or d == 0:
                break
            d -= 1
        decimals.append(d)
    sensitivity = [c * int(math.ceil(mag * 10 ** d)) for mag, d in zip(magnitudes, decimals)]
    noise_scale = [max(s, 1) * m / epsilon for s in sensitivity]
    max_abs = [int(rows * s + math.ceil(NOISE_TAIL * b)) for s, b in zip(sensitivity, noise_scale)]
    worst = max(parties * a for a in max_abs)
    if worst >= MAX_ABS_TOTAL:
        raise InvalidQuery(
            f"The largest possible total ({worst:.3g}) would wrap the encrypted slots (limit {MAX_ABS_TOTAL:.3g}): "
            "max_rows, the bounds or epsilon are too extreme for a secure sum.", code="would_overflow")
    return EncodingPlan(slots=slots, decimals=decimals, sensitivity=sensitivity, noise_scale=noise_scale,
                        max_abs_per_node=max_abs, parties=parties, mode=mode, epsilon=epsilon,
                        centres=centres, halves=halves)


def _sum_layout(info: DatasetInfo, op: HEOp) -> tuple[list[str], list[float], list[bool]]:
    """Slots of a secure sum: each column (then the count), their largest magnitude, whether integer."""
    if not op.columns and not op.count:
        raise InvalidQuery("A secure sum needs at least one column (or count=True).", code="invalid_query")
    if op.y is not None or op.x or op.metric is not None or op.degree is not None:
        raise InvalidQuery("'x', 'y', 'metric' and 'degree' do not apply to kind 'sum'.", code="invalid_query")
    if len(set(op.columns)) != len(op.columns):
        raise InvalidQuery("Columns must be distinct.", code="invalid_query")
    cols = [_numeric(info, n) for n in op.columns]
    slots = list(op.columns) + (["count"] if op.count else [])
    magnitudes = [max(abs(col.bounds[0]), abs(col.bounds[1])) for col in cols] + ([1.0] if op.count else [])
    is_int = [col.type == "int" for col in cols] + ([True] if op.count else [])
    return slots, magnitudes, is_int


def _linreg_layout(info: DatasetInfo, op: HEOp) -> tuple[list[str], list[float], list[float]]:
    """Slots of a regression's moments and the centre and half-range that standardize ``(y, x...)``."""
    if op.y is None or not op.x:
        raise InvalidQuery("A regression needs 'y' and at least one 'x'.", code="invalid_query")
    if op.metric is not None or op.degree is not None:
        raise InvalidQuery("'metric' and 'degree' apply only to kind 'evaluate'.", code="invalid_query")
    if op.columns or op.count:
        raise InvalidQuery("'columns' and 'count' apply only to kind 'sum'.", code="invalid_query")
    if len(set(op.x)) != len(op.x) or op.y in op.x:
        raise InvalidQuery("Regressors must be distinct and differ from y.", code="invalid_query")
    cols = [_numeric(info, op.y)] + [_numeric(info, n) for n in op.x]
    centres = [(col.bounds[0] + col.bounds[1]) / 2.0 for col in cols]
    halves = [(col.bounds[1] - col.bounds[0]) / 2.0 for col in cols]
    return linreg_slots(op.x, op.y), centres, halves


def _evaluate_layout(info: DatasetInfo, op: HEOp):
    """Columns, slot names, centres and half-ranges (y first) of an ``evaluate`` op."""
    if op.y is None or not op.x or op.metric is None or op.degree is None:
        raise InvalidQuery("An evaluation needs 'y', at least one 'x', a 'metric' and a 'degree'.",
                           code="invalid_query")
    if op.columns or op.count:
        raise InvalidQuery("'columns' and 'count' apply only to kind 'sum'.", code="invalid_query")
    if len(set(op.x)) != len(op.x) or op.y in op.x:
        raise InvalidQuery("Regressors must be distinct and differ from y.", code="invalid_query")
    if op.metric == "sse" and op.degree != 2:
        raise InvalidQuery("metric 'sse' is a quadratic: degree must be 2.", code="invalid_query")
    if op.metric == "logloss" and op.degree % 2:
        raise InvalidQuery("metric 'logloss' needs an even degree (2, 4 or 6) for its softplus polynomial.",
                           code="invalid_query")
    y_col = _numeric(info, op.y, allow_bool=True)
    if op.metric == "logloss" and tuple(y_col.bounds) != (0.0, 1.0) and tuple(y_col.bounds) != (0, 1):
        raise InvalidQuery(f"metric 'logloss' needs a 0/1 outcome; '{op.y}' has bounds {y_col.bounds}.",
                           code="bad_bounds")
    cols = [y_col] + [_numeric(info, n, allow_bool=True) for n in op.x]
    monomials = eval_monomials(op)
    if len(monomials) > MAX_EVAL_MOMENTS:
        raise InvalidQuery(f"This evaluation needs {len(monomials)} moments (at most {MAX_EVAL_MOMENTS}: one "
                           "encrypted weight each); use fewer regressors or a lower degree.", code="invalid_query")
    names = eval_variables(op)
    slots = [monomial_name(m, names) for m in monomials]
    centres = [(col.bounds[0] + col.bounds[1]) / 2.0 for col in cols]
    halves = [(col.bounds[1] - col.bounds[0]) / 2.0 for col in cols]
    return cols, slots, centres, halves


def noise_half_width(plan_: EncodingPlan, alpha: float) -> list[float]:
    """Per slot, in integer units: |total noise| stays below this with probability >= 1 - alpha.

    Distributed mode: the total's noise is one discrete Laplace of scale ``b``;
    ``P(|Z| >= b ln(1/alpha) + 1) <= alpha``. Conservative mode: ``k``
    independent ones, union bound: ``k (b ln(k/alpha) + 1)``.
    """
    k = plan_.parties
    if plan_.mode == "distributed":
        return [b * math.log(1 / alpha) + 1 for b in plan_.noise_scale]
    return [k * (b * math.log(k / alpha) + 1) for b in plan_.noise_scale]
