"""The analyst's half of secure aggregation: keys, session, decryption of the total only.

The kernel creates a BFV key pair, sends only the public context to the
aggregator, asks each node to contribute (each node charges its own ledger
and sends its ciphertext to the aggregator, not to us), then fetches and
decrypts the one summed ciphertext. No node's partial ever reaches the kernel.
"""

from __future__ import annotations

import math
import uuid

import numpy as np
import pandas as pd

from workbench.client.dataset import RemoteDataset
from workbench.client.federation import FederatedDataset
from workbench.client.handles import register
from workbench.errors import InvalidQuery, WorkbenchError
from workbench.client.results import as_released
from workbench.channels.secagg import he_params as params
from workbench.channels.secagg.session import PROTOCOLS, AggregatorClient, SecureAggregate, ask_all, node_call, preflight
from workbench.channels.secagg.wire import ContributeResponse, EncodingPlan, HEOp, NoiseMode, SessionCreated, SessionResult, noise_half_width




def run_he_session(fds: "FederatedDataset", op: HEOp, epsilon: float, *, mode: NoiseMode = "distributed",
                   aggregator: str | None = None, context=None, public: bytes | None = None,
                   weights: list[str] | None = None, scheme: str = params.SCHEME) -> SecureAggregate:
    """Open an HE session, have every node contribute, and fetch the summed ciphertext (not decrypted)."""
    handles, local_plan, url = preflight(fds, op, epsilon, mode, aggregator)
    if context is None:
        context = params.new_context()
        public = params.public_bytes(context)
    parties = [h.node.name for h in handles]
    agg = AggregatorClient(url)
    try:
        body = {"dataset": fds.name, "op": op.model_dump(mode="json"), "epsilon": epsilon, "mode": mode,
                "parties": parties, "context": params.b64encode(public)}
        if weights:
            body["weights"] = weights
        created = SessionCreated.model_validate(agg.request("POST", "/sessions", json=body))

        def ask(h: "RemoteDataset") -> ContributeResponse:
            body = {"aggregator_url": url, "session_id": created.session_id, "request_id": uuid.uuid4().hex}
            if h.grant_id is not None:
                body["grant_id"] = h.grant_id
            return ContributeResponse.model_validate(
                node_call(h, "POST", h.endpoint("/he/contribute"), json=body, retries=3))

        replies = ask_all(handles, ask)
        result = SessionResult.model_validate(agg.request(
            "GET", f"/sessions/{created.session_id}/result", headers={"X-Result-Token": created.result_token}))
        sizes = {"context": len(public), "ciphertext_per_node": replies[0].ciphertext_bytes if replies else 0,
                 "analyst_sent": agg.bytes_sent, "analyst_received": agg.bytes_received}
    finally:
        agg.close()
    return SecureAggregate(local_plan, [], parties, [h.node.url for h in handles], url, created.session_id,
                           replies, sizes, "he", result.ciphertext, context)


def secure_aggregate(fds: "FederatedDataset", op: HEOp, epsilon: float, *, mode: NoiseMode = "distributed",
                     aggregator: str | None = None, protocol: str = "he") -> SecureAggregate:
    """Run one secure-aggregation session over every node of ``fds``; returns the decrypted noisy total.

    ``protocol="he"``: BFV ciphertexts added by the aggregator, decrypted here.
    ``protocol="smpc"``: additive secret shares exchanged between the nodes
    (see :mod:`workbench.channels.secagg`); the nodes' partial sums of shares add up here.

    Privacy guarantee: each node charges ``epsilon`` to your grant there and
    releases only a ciphertext (to the aggregator) or secret shares (to the
    other nodes) and a uniformly random partial sum. In ``distributed`` mode
    the decrypted total is epsilon-DP if every node is honest (the noise shares
    add up to one discrete Laplace); in ``conservative`` mode each node's share
    is epsilon-DP on its own. You never receive a single node's partial.
    """
    runner = PROTOCOLS.get(protocol)
    if runner is None:
        raise InvalidQuery("protocol is 'he' (homomorphic encryption) or 'smpc' (secret sharing).",
                           code="invalid_query")
    return runner(fds, op, epsilon, mode=mode, aggregator=aggregator)


def he_aggregate(fds: "FederatedDataset", op: HEOp, epsilon: float, *, mode: NoiseMode = "distributed",
                 aggregator: str | None = None) -> SecureAggregate:
    """The HE protocol: BFV ciphertexts added by the aggregator, the total decrypted here."""
    out = run_he_session(fds, op, epsilon, mode=mode, aggregator=aggregator)
    raw = params.b64decode(out.result_ciphertext, params.MAX_CIPHERTEXT_BYTES, "ciphertext")
    import tenseal as ts

    out.totals = [int(v) for v in ts.bfv_vector_from(out.context, raw).decrypt()][:len(out.plan.slots)]
    out.result_ciphertext = None
    return out


def _rounding_slack(p: EncodingPlan, rows: int) -> list[float]:
    """Per slot, in output units: the most per-row rounding can move a total (0.5 unit per row per node)."""
    return [0.0 if d == 0 else p.parties * rows * 0.5 / 10 ** d for d in p.decimals]


def secure_sum(fds: "FederatedDataset", columns: list[str] | str, epsilon: float, *, count: bool = False,
               mode: NoiseMode = "distributed", aggregator: str | None = None, alpha: float = 0.05,
               protocol: str = "he") -> pd.DataFrame:
    """Noisy totals of ``columns`` over every node, computed under encryption.

    Returns one row per column (and ``count``): ``estimate``, ``lower``,
    ``upper`` (a ``1 - alpha`` interval for the noise and fixed-point rounding,
    per statistic; clipping to the public bounds is not included).

    ``protocol``: ``"he"`` (BFV, added by the aggregator) or ``"smpc"``
    (additive secret sharing between the nodes); same noise, same charge.

    Privacy guarantee: see :func:`secure_aggregate`; epsilon is split evenly
    over the columns, and every node is charged ``epsilon`` once.
    """
    columns = [columns] if isinstance(columns, str) else list(columns)
    op = HEOp(kind="sum", columns=columns, count=count)
    agg = secure_aggregate(fds, op, epsilon, mode=mode, aggregator=aggregator, protocol=protocol)
    p = agg.plan
    values = agg.values()
    half = [h / 10 ** d for h, d in zip(noise_half_width(p, alpha), p.decimals)]
    slack = _rounding_slack(p, fds.schema.max_rows)
    frame = pd.DataFrame({"statistic": [f"sum({c})" for c in columns] + (["count"] if count else []),
                          "estimate": values, "lower": values - np.array(half) - np.array(slack),
                          "upper": values + np.array(half) + np.array(slack)})
    frame.attrs.update(agg.attrs())
    frame.attrs.update({"kind": "secure_sum", "alpha": alpha, "columns": columns})
    return as_released(frame)


# ---------------------------------------------------------------- regression


def _unpack(p: EncodingPlan, values: np.ndarray, n_x: int) -> tuple[np.ndarray, np.ndarray, float]:
    q = n_x + 1
    xx = np.zeros((q, q))
    i = 0
    for r in range(q):
        for c in range(r, q):
            xx[r, c] = xx[c, r] = values[i]
            i += 1
    xy = values[i:i + q]
    yy = float(values[i + q])
    return xx, xy, yy


def _nearest_pd(a: np.ndarray, floor: float) -> tuple[np.ndarray, bool]:
    """Symmetric ``a`` with eigenvalues raised to at least ``floor`` (noise can break positive definiteness)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    if w.min() >= floor:
        return a, False
    return (v * np.maximum(w, floor)) @ v.T, True


def solve_regression(p: EncodingPlan, values: np.ndarray, x: list[str]) -> dict:
    """OLS from noisy standardized sufficient statistics, mapped back to the original units (post-processing)."""
    xx, xy, yy = _unpack(p, values, len(x))
    n = xx[0, 0]
    q = len(x) + 1
    if n <= q + 1:
        raise InvalidQuery("Too few rows (noisy count) for this regression.", code="invalid_query")
    xx_pd, repaired = _nearest_pd(xx, floor=max(1.0, 1e-6 * n))
    beta = np.linalg.solve(xx_pd, xy)
    rss = max(yy - 2 * beta @ xy + beta @ xx_pd @ beta, 1e-12 * n)
    sigma2 = rss / (n - q)
    cov = sigma2 * np.linalg.inv(xx_pd)
    # z_y = (y - c_y)/h_y, z_j = (x_j - c_j)/h_j  =>  y = c_y + h_y (b0 + sum b_j (x_j - c_j)/h_j)
    c_y, h_y = p.centres[0], p.halves[0]
    cs, hs = np.array(p.centres[1:]), np.array(p.halves[1:])
    t = np.zeros((q, q))
    t[0, 0] = h_y
    t[0, 1:] = -h_y * cs / hs
    t[1:, 1:] = np.diag(h_y / hs)
    coef = t @ beta
    coef[0] += c_y
    cov_orig = t @ cov @ t.T
    return {"coef": coef, "se": np.sqrt(np.maximum(np.diag(cov_orig), 0)), "n": n, "sigma": math.sqrt(sigma2) * h_y,
            "repaired": repaired, "cov": cov_orig}


def linear_regression(fds: "FederatedDataset", y: str, x: list[str] | str, epsilon: float, *,
                      mode: NoiseMode = "distributed", aggregator: str | None = None,
                      alpha: float = 0.05, protocol: str = "he") -> pd.DataFrame:
    """Federated OLS of ``y`` on ``x`` (with intercept) from HE-aggregated, DP-noised X'X and X'y.

    Every variable is clipped to its public bounds and standardized with them
    (``(v - mid) / half_range``, so each product lies in [-1, 1]); each node
    packs the upper triangle of Z'Z, Z'y and y'y in one ciphertext, with noise.
    The kernel solves the normal equations and maps the coefficients back to the
    original units. Standard errors are the classical OLS ones computed from the
    noisy statistics (``sigma^2 (X'X)^-1``): they ignore the DP noise and the
    clipping, so treat them as approximate (see docs/federation.md).

    Privacy guarantee: as :func:`secure_aggregate`; epsilon is split evenly over
    the packed statistics; each node is charged ``epsilon`` once.
    """
    x = [x] if isinstance(x, str) else list(x)
    op = HEOp(kind="linreg", y=y, x=x)
    agg = secure_aggregate(fds, op, epsilon, mode=mode, aggregator=aggregator, protocol=protocol)
    fit = solve_regression(agg.plan, agg.values(), x)
    from scipy import stats

    q = len(x) + 1
    dof = max(fit["n"] - q, 1)
    z = float(stats.t.ppf(1 - alpha / 2, dof))
    dp_se = dp_noise_std_err(agg.plan, agg.values(), x)
    total_se = np.sqrt(fit["se"] ** 2 + dp_se ** 2)
    frame = pd.DataFrame({"coef": fit["coef"], "std_err": fit["se"], "dp_std_err": dp_se,
                          "lower": fit["coef"] - z * total_se, "upper": fit["coef"] + z * total_se},
                         index=pd.Index(["intercept"] + x, name="term"))
    frame.attrs.update(agg.attrs())
    frame.attrs.update({"kind": "linear_regression", "y": y, "x": x, "n_noisy": float(fit["n"]),
                        "sigma": fit["sigma"], "alpha": alpha, "xx_repaired": fit["repaired"],
                        "note": "std_err: classical OLS (sampling); dp_std_err: the DP noise's spread (simulated from "
                                "the public noise scales); lower/upper combine both. Clipping is not included."})
    return as_released(frame)


def dp_noise_std_err(p: EncodingPlan, values: np.ndarray, x: list[str], draws: int = 300) -> np.ndarray:
    """Spread of the coefficients due to the DP noise alone: re-solve with fresh noise of the public scales.

    Post-processing of the released statistics and public parameters (no data, no privacy cost). The
    discrete Laplace noise is approximated by a continuous one of the same scale.
    """
    rng = np.random.default_rng()
    scales = np.array(p.noise_scale) / 10.0 ** np.array(p.decimals)
    reps = 1 if p.mode == "distributed" else p.parties
    coefs = []
    for _ in range(draws):
        noise = sum(rng.laplace(0.0, scales) for _ in range(reps))
        try:
            coefs.append(solve_regression(p, values + noise, x)["coef"])
        except WorkbenchError:
            continue
    return np.std(np.array(coefs), axis=0) if len(coefs) > 10 else np.full(len(x) + 1, np.nan)


PROTOCOLS["he"] = he_aggregate


# ---------------------------------------------------------------- the handle's methods


class SecureAggregationMethods:
    """:class:`~workbench.FederatedDataset` methods of secure aggregation (registered on import)."""

    def secure_sum(self, columns: list[str] | str, epsilon: float, **options):
        """Noisy totals computed under encryption (``protocol="he"``) or secret sharing (``protocol="smpc"``):
        only the total is revealed (see :func:`workbench.channels.secagg.kernel.secure_sum`)."""
        self._whole("secure_sum")
        return secure_sum(self, columns, epsilon, **options)

    # ``fed_ds.linear_regression(y, x, epsilon=...)`` (this module's :func:`linear_regression`) is reached through
    # the DP channel's federated ``linear_regression`` (workbench.channels.dp.federated), which also offers the
    # same regression as a previewable question over each node's DP moments.


register(FederatedDataset, SecureAggregationMethods)
