"""One rule for tests that check a released interval against the truth in a single draw.

A correct 95% interval misses the truth one time in twenty, so a suite with a dozen such checks fails on an idle
machine most weeks. A test therefore asks for the truth within twice the stated half-width around the interval
(about 3.9 standard errors for a normal estimate: a correct interval misses that by chance about once in 10,000
draws), and leaves coverage itself to the tests that count hits over many releases.
"""

from __future__ import annotations


def near_interval(lower: float, upper: float, true: float) -> bool:
    """True if ``true`` lies within the interval widened by its half-width on each side."""
    half = (upper - lower) / 2
    return lower - half <= true <= upper + half


def near(row, true: float) -> bool:
    """:func:`near_interval` on a released row (a mapping or Series with ``lower`` and ``upper``)."""
    return near_interval(row["lower"], row["upper"], true)


def fewest_hits(runs: int, level: float = 0.95, chance: float = 1e-4) -> int:
    """The fewest covering intervals out of ``runs`` that a correct ``level`` interval reaches but with probability
    ``chance``: a coverage test fails on fewer hits, so an honest interval fails it about once in 10,000 runs while
    one that covers 85% of the time (at 300 runs) is still caught."""
    from scipy.stats import binom

    return int(binom.ppf(chance, runs, level))
