"""Correlations, covariances, linear regression and cross-tabs, computed in the notebook from DP releases.

Everything here is post-processing of one DP release (a ``moments`` query's
noisy sufficient statistics, or a group-by count), so it costs nothing beyond
that release and replays free like any question.

Sufficient statistics. With ``z = (x - c) / h`` (``c``, ``h`` the centre and
half-width of a column's public bounds, z clipped to [-1, 1]) the node
releases, in ONE OpenDP query at the requested epsilon split evenly, the
noisy ``n``, every ``S_a = sum z_a`` and every ``P_ab = sum z_a z_b``. The raw
moments follow by linearity: ``sum x_a = n c_a + h_a S_a`` and
``sum x_a x_b = n c_a c_b + c_a h_b S_b + c_b h_a S_a + h_a h_b P_ab``.

Estimates: ``cov_ab = sum x_a x_b / n - (sum x_a)(sum x_b) / n^2``; ``corr_ab =
cov_ab / sqrt(cov_aa cov_bb)``; OLS ``beta = (X'X)^-1 X'y`` with an intercept.

Standard errors include the DP noise: ``SE^2 = SE_sampling^2 + SE_noise^2``.
``SE_noise`` is the spread of the statistic over 2,000 redraws of the released
noise (Laplace at the released scales, a parametric bootstrap around the noisy
values); ``SE_sampling`` is the textbook one evaluated at the noisy moments:
OLS ``sigma^2 (X'X)^-1`` with ``sigma^2 = RSS / (n - p)``; correlation
``(1 - r^2) / sqrt(n - 3)`` (its interval is built on Fisher's z scale);
covariance ``sqrt((cov_aa cov_bb + cov_ab^2) / (n - 1))`` (normal theory).
Intervals are ``estimate +- 1.96 SE`` (95%).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InvalidQuery, NotSupported
from .dataset import Query
from .results import as_released

DRAWS = 2_000
Z95 = 1.959963984540054


class NoisyMoments:
    """Noisy moments in arrays: their values, the public centring of each column, and the Laplace scales of
    the noise they carry (one row of scales per independent release: one for a node, k for k nodes pooled)."""

    def __init__(self, columns: list[str], centre, half, values, scales):
        self.columns = columns
        self.names = moment_names(columns)
        self.centre, self.half = np.asarray(centre, dtype=float), np.asarray(half, dtype=float)
        self.values = np.asarray(values, dtype=float)
        self.scales = np.atleast_2d(np.asarray(scales, dtype=float))

    @classmethod
    def from_table(cls, table: pd.DataFrame, columns: list[str]) -> "NoisyMoments":
        """The moments of one ``moments`` release (its table: moment, estimate, scale; ``c__<column>`` rows)."""
        rows = table.set_index("moment")
        names = moment_names(columns)
        return cls(columns, [rows.loc[f"c__{a}", "estimate"] for a in columns],
                   [rows.loc[f"c__{a}", "scale"] for a in columns],
                   [rows.loc[m, "estimate"] for m in names], [rows.loc[m, "scale"] for m in names])

    @classmethod
    def pooled(cls, tables: list[pd.DataFrame], columns: list[str], where: list[str]) -> "NoisyMoments":
        """The sum of several nodes' moments (post-processing of their DP releases). Each node standardised
        with its own public bounds, so they must agree: else ``bounds_mismatch`` (the sums would not add)."""
        parts = [cls.from_table(t, columns) for t in tables]
        for part, node in zip(parts[1:], where[1:]):
            differ = [a for a, c0, h0, c1, h1 in zip(columns, parts[0].centre, parts[0].half, part.centre, part.half)
                      if not (np.isclose(c0, c1) and np.isclose(h0, h1))]
            if differ:
                raise InvalidQuery(f"{node} and {where[0]} standardise {differ} with different public bounds, so "
                                   "their moments do not add; the owners must declare the same bounds.",
                                   code="bounds_mismatch", details={"columns": differ, "node": node})
        return cls(columns, parts[0].centre, parts[0].half, sum(p.values for p in parts),
                   np.vstack([p.scales for p in parts]))

    def raw(self, vector: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(n, sum x, sum x x') in the columns' own units from one vector of moments."""
        k = len(self.columns)
        n, s = vector[0], vector[1:1 + k]
        p = np.zeros((k, k))
        it = iter(vector[1 + k:])
        for i in range(k):
            for j in range(i, k):
                p[i, j] = p[j, i] = next(it)
        c, h = self.centre, self.half
        sums = n * c + h * s
        cross = n * np.outer(c, c) + np.outer(c, h * s) + np.outer(h * s, c) + np.outer(h, h) * p
        return n, sums, cross

    def draws(self) -> np.ndarray:
        """Redraws of the released noise around the noisy values (every release's Laplace noise, summed)."""
        rng = np.random.default_rng()
        noise = sum(rng.laplace(0.0, row, size=(DRAWS, len(self.values))) for row in self.scales)
        return self.values + noise


def moment_names(columns: list[str]) -> list[str]:
    """The moments of a ``moments`` release, in order: n, every sum, every product (a <= b)."""
    return ["n", *(f"s__{a}" for a in columns),
            *(f"p__{a}__{b}" for i, a in enumerate(columns) for b in columns[i:])]


def _covariance(n: float, sums: np.ndarray, cross: np.ndarray) -> np.ndarray:
    return cross / n - np.outer(sums, sums) / (n * n)


def _correlation(cov: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
        return np.clip(cov / np.outer(sd, sd), -1.0, 1.0)


def _noise_sd(samples: list[np.ndarray]) -> np.ndarray:
    stacked = np.array(samples, dtype=float)
    return np.nanstd(stacked, axis=0)


def covariance_table(moments: NoisyMoments, kind: str) -> pd.DataFrame:
    """Pairwise covariances or correlations with standard errors including the DP noise."""
    n, sums, cross = moments.raw(moments.values)
    cov = _covariance(n, sums, cross)
    stat = _correlation(cov) if kind == "corr" else cov
    noisy = []
    for vector in moments.draws():
        dn, ds, dc = moments.raw(vector)
        c = _covariance(dn, ds, dc) if dn > 0 else np.full_like(cov, np.nan)
        noisy.append(np.arctanh(np.clip(_correlation(c), -0.999999, 0.999999)) if kind == "corr" else c)
    noise = _noise_sd(noisy)
    rows = []
    cols = moments.columns
    for i, a in enumerate(cols):
        for j, b in enumerate(cols):
            rows.append([a, b, stat[i, j], *_interval(kind, stat[i, j], cov, i, j, n, noise[i, j])])
    out = pd.DataFrame(rows, columns=["row", "column", "estimate", "se", "lower", "upper"])
    out.attrs["matrix"] = {a: {b: float(stat[i, j]) for j, b in enumerate(cols)} for i, a in enumerate(cols)}
    return out


def _interval(kind: str, value: float, cov: np.ndarray, i: int, j: int, n: float, noise_sd: float):
    """(se, lower, upper) of one covariance or correlation (see the module docstring)."""
    if not np.isfinite(value) or n <= 3:
        return np.nan, (-1.0 if kind == "corr" else np.nan), (1.0 if kind == "corr" else np.nan)
    if kind == "corr":
        if i == j:
            return 0.0, 1.0, 1.0
        z = np.arctanh(np.clip(value, -0.999999, 0.999999))
        se_z = np.sqrt(1.0 / (n - 3) + noise_sd ** 2)
        se = np.sqrt((1 - value ** 2) ** 2 / (n - 3) + (noise_sd * (1 - value ** 2)) ** 2)
        return float(se), float(np.tanh(z - Z95 * se_z)), float(np.tanh(z + Z95 * se_z))
    sampling = (cov[i, i] * cov[j, j] + cov[i, j] ** 2) / (n - 1)
    se = float(np.sqrt(max(sampling, 0.0) + noise_sd ** 2))
    return se, float(value - Z95 * se), float(value + Z95 * se)


def _ols(n: float, sums: np.ndarray, cross: np.ndarray):
    """Coefficients (intercept first) and X'X, X'y, y'y of the regression of the last column on the others."""
    k = len(sums) - 1
    xtx = np.empty((k + 1, k + 1))
    xtx[0, 0], xtx[0, 1:], xtx[1:, 0], xtx[1:, 1:] = n, sums[:k], sums[:k], cross[:k, :k]
    xty = np.concatenate([[sums[k]], cross[:k, k]])
    beta = np.linalg.solve(xtx, xty)
    return beta, xtx, xty, cross[k, k]


def regression_table(moments: NoisyMoments, y: str, x: list[str]) -> pd.DataFrame:
    """OLS coefficients with standard errors including the DP noise (see the module docstring)."""
    n, sums, cross = moments.raw(moments.values)
    try:
        beta, xtx, xty, yty = _ols(n, sums, cross)
    except np.linalg.LinAlgError:
        raise InvalidQuery("The noisy X'X is singular: release at a larger epsilon or use fewer predictors.",
                           code="computation_failed") from None
    p = len(beta)
    sigma2 = max(yty - beta @ xty, 0.0) / max(n - p, 1.0)
    sampling = sigma2 * np.diag(np.linalg.inv(xtx))
    noisy = []
    for vector in moments.draws():
        try:
            noisy.append(_ols(*moments.raw(vector))[0])
        except np.linalg.LinAlgError:
            continue
    noise = _noise_sd(noisy)
    se = np.sqrt(np.maximum(sampling, 0.0) + noise ** 2)
    out = pd.DataFrame({"term": ["intercept", *x], "estimate": beta, "se": se, "lower": beta - Z95 * se,
                        "upper": beta + Z95 * se, "se_sampling": np.sqrt(np.maximum(sampling, 0.0)),
                        "se_noise": noise})
    out.attrs.update({"y": y, "n": float(n), "residual_sd": float(np.sqrt(sigma2))})
    return out


def analysis_table(moments: NoisyMoments, analysis: str, y: str | None = None, x: list[str] | None = None):
    """The table of ``analysis`` ("corr", "cov" or "ols") from noisy moments (post-processing)."""
    return regression_table(moments, y, x) if analysis == "ols" else covariance_table(moments, analysis)


class Moments(Query):
    """A correlation, covariance or regression: one ``moments`` release, post-processed here."""

    def __init__(self, dataset, spec, analysis: str, y: str | None = None, x: list[str] | None = None):
        super().__init__(dataset, spec)
        self.analysis, self.y, self.x = analysis, y, x

    def release(self, epsilon: float | None = None, delta: float = 0.0, *, accuracy: float | None = None):
        """Release the noisy sufficient statistics and compute the analysis from them (see module docs).

        Privacy guarantee: (epsilon, delta)-DP for the dataset's privacy unit (one OpenDP query on the
        node); everything computed here is post-processing.
        """
        table = super().release(epsilon, delta, accuracy=accuracy)
        out = analysis_table(NoisyMoments.from_table(table, list(self.spec.columns)), self.analysis, self.y, self.x)
        out.attrs.update({k: v for k, v in table.attrs.items() if k not in out.attrs})
        out.attrs.update(kind="linear_regression" if self.analysis == "ols" else self.analysis, y=self.y)
        out.attrs["moments"] = table[["moment", "estimate", "scale"]].to_dict("records")
        return as_released(out)


class Crosstab(Query):
    """Counts per pair of public categories, released as a long table and shown wide."""

    def release(self, epsilon: float | None = None, delta: float = 0.0, *, accuracy: float | None = None):
        """A wide table: index = first variable, columns = (estimate | lower | upper, second variable).

        Privacy guarantee: one DP group-by count at (epsilon, delta); the pivot is post-processing."""
        long = super().release(epsilon, delta, accuracy=accuracy)
        row, column = self.spec.by
        wide = long.pivot(index=row, columns=column, values=["estimate", "lower", "upper"])
        wide.attrs.update(long.attrs)
        return wide


class LogisticRegression:
    """Logistic regression on one node through the federated-learning channel (DP-SGD, its accountant).

    Privacy guarantee: the FL channel's own (epsilon, delta)-DP, on this node's data: per-record clipped
    gradients with Gaussian noise, composed by :mod:`workbench.channels.fl.accountant` over the rounds and charged
    through the node's gate (see docs/federated_learning.md). Nothing new is invented here.
    """

    def __init__(self, dataset, y: str, x: list[str]):
        if dataset._where is not None or dataset._derive:
            raise NotSupported("logistic_regression() trains on the whole dataset: filters and derived "
                               "columns are not supported by the learning channel yet.", code="not_supported")
        self.dataset, self.y, self.x = dataset, y, list(x)

    def release(self, epsilon: float = 1.0, delta: float = 1e-6, *, rounds: int = 5, **options) -> pd.DataFrame:
        """Train, wait, and return the coefficients (``estimate``; features scaled to [-1, 1] by their public
        bounds). ``df.attrs["model"]`` is the trained model (``predict``, ``score``)."""
        from .federation import Federation

        fed = Federation([self.dataset.node])
        handle = fed.dataset(self.dataset.name)
        handle.handles[0].grant_id = self.dataset.grant_id
        model = handle.train("logistic_regression", y=self.y, x=self.x, rounds=rounds, epsilon=epsilon,
                             delta=delta, **options).result()
        coef = model.coefficients()
        out = pd.DataFrame({"term": list(coef.index), "estimate": coef.to_numpy(dtype=float),
                            "lower": np.nan, "upper": np.nan})
        out.attrs.update({"model": model, "epsilon": epsilon, "delta": delta, "rounds": rounds,
                          "kind": "logistic_regression", "y": self.y})
        return as_released(out)
