"""Privacy accounting for federated training: Gaussian mechanisms, composed exactly.

Every release a node makes during a training job is a Gaussian mechanism: a
sum with L2 sensitivity ``Δ`` plus ``N(0, σ²)`` noise on each coordinate.
Such a mechanism is ``μ``-Gaussian-DP with ``μ = Δ/σ`` (Dong, Roth, Su 2019),
and ``k`` of them compose to ``μ = sqrt(Σ μ_i²)`` *exactly* (no slack, unlike
the RDP bound). The (ε, δ) curve of ``μ``-GDP is the analytic Gaussian
formula (Balle & Wang 2018, Thm. 8):

    δ(ε) = Φ(−ε/μ + μ/2) − e^ε · Φ(−ε/μ − μ/2)

which is also what a PLD accountant computes for Gaussian mechanisms without
subsampling (our training is full-batch: no amplification is claimed).

:func:`rdp_epsilon` gives the classical Rényi-DP conversion of the same
composition (``α μ²/2`` at order α); it is an upper bound on :func:`epsilon_for`
and the tests check both against known values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.special import log_ndtr

__all__ = ["JobPlan", "delta_for", "epsilon_for", "mu_for", "plan_job", "rdp_epsilon"]


def delta_for(mu: float, epsilon: float) -> float:
    """δ(ε) of a ``mu``-GDP mechanism (exact)."""
    if mu <= 0:
        return 0.0
    a = -epsilon / mu + mu / 2
    b = -epsilon / mu - mu / 2
    value = math.exp(log_ndtr(a)) - math.exp(epsilon + log_ndtr(b))
    return max(value, 0.0)


def epsilon_for(mu: float, delta: float) -> float:
    """The smallest ε ≥ 0 with δ(ε) ≤ ``delta`` for a ``mu``-GDP mechanism."""
    if not 0 < delta < 1:
        raise ValueError("delta must be in (0, 1)")
    if mu <= 0 or delta_for(mu, 0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while delta_for(mu, hi) > delta:
        hi *= 2
        if hi > 1e6:
            return math.inf
    for _ in range(200):
        mid = (lo + hi) / 2
        if delta_for(mu, mid) > delta:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return hi


def mu_for(epsilon: float, delta: float) -> float:
    """The largest ``mu`` whose GDP curve meets (ε, δ) (rounded down, so never over)."""
    if epsilon <= 0 or not 0 < delta < 1:
        raise ValueError("epsilon must be > 0 and delta in (0, 1)")
    lo, hi = 0.0, 1.0
    while delta_for(hi, epsilon) < delta:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if delta_for(mid, epsilon) <= delta:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-13:
            break
    return lo


def rdp_epsilon(mu: float, delta: float) -> float:
    """ε at ``delta`` from the Rényi-DP curve ``α μ²/2`` (classical conversion; an upper bound)."""
    best = math.inf
    for i in range(1, 4000):
        alpha = 1 + i / 20
        best = min(best, alpha * mu * mu / 2 + math.log(1 / delta) / (alpha - 1))
    return best


@dataclass(frozen=True)
class JobPlan:
    """How one node spends (ε, δ) over a training job.

    The total ``mu`` is split into shares (squared ``mu`` adds up): one noisy
    count (released with round 1), one noisy metric vector per round and
    ``local_steps`` noisy gradient sums per round. ``sigma_*`` are the noise
    standard deviations *in units of the sensitivity*. ``cumulative[r]`` is the
    exact ε spent after ``r + 1`` rounds, so the per-round charges
    ``cumulative[r] − cumulative[r−1]`` add up to the job's ε.
    """

    epsilon: float
    delta: float
    rounds: int
    local_steps: int
    mu: float
    sigma_count: float
    sigma_metrics: float
    sigma_grad: float
    cumulative: tuple[float, ...]

    def charge(self, release_index: int) -> tuple[float, float]:
        """(ε, δ) charged for the ``release_index``-th round release (0-based) of this job."""
        before = self.cumulative[release_index - 1] if release_index > 0 else 0.0
        eps = max(self.cumulative[release_index] - before, 0.0)
        return eps, (self.delta if release_index == 0 else 0.0)

    def as_dict(self) -> dict:
        return {"epsilon": self.epsilon, "delta": self.delta, "rounds": self.rounds,
                "local_steps": self.local_steps, "mu": self.mu, "sigma_count": self.sigma_count,
                "sigma_metrics": self.sigma_metrics, "sigma_grad": self.sigma_grad,
                "per_round_epsilon": [self.charge(i)[0] for i in range(self.rounds)]}


#: Shares of μ² for the count and the metrics; the rest goes to the gradients.
COUNT_SHARE = 0.02
METRICS_SHARE = 0.08


def plan_job(epsilon: float, delta: float, rounds: int, local_steps: int) -> JobPlan:
    """Split (ε, δ) over a job's releases; calibrate each Gaussian's noise to its share."""
    if rounds < 1 or local_steps < 1:
        raise ValueError("rounds and local_steps must be >= 1")
    mu = mu_for(epsilon, delta)
    mu2 = mu * mu
    count_mu2 = COUNT_SHARE * mu2
    metrics_mu2 = METRICS_SHARE * mu2 / rounds
    grad_mu2 = (1 - COUNT_SHARE - METRICS_SHARE) * mu2 / (rounds * local_steps)
    cumulative = []
    for r in range(1, rounds + 1):
        spent_mu2 = count_mu2 + r * (metrics_mu2 + local_steps * grad_mu2)
        cumulative.append(epsilon_for(math.sqrt(spent_mu2), delta))
    cumulative[-1] = min(cumulative[-1], epsilon)
    return JobPlan(epsilon=epsilon, delta=delta, rounds=rounds, local_steps=local_steps, mu=mu,
                   sigma_count=1 / math.sqrt(count_mu2), sigma_metrics=1 / math.sqrt(metrics_mu2),
                   sigma_grad=1 / math.sqrt(grad_mu2), cumulative=tuple(cumulative))
