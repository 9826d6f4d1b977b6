"""One rule for tests that check a released interval against the truth in a single draw.

A correct 95% interval misses the truth one time in twenty, so a suite with dozens of such checks fails on an idle
machine most runs. A test therefore asks for the truth within the interval widened by its whole width on each side,
that is within three half-widths of a centred estimate. For Laplace noise (the heaviest tail we release) a 95%
half-width is ``b ln 20``, so a correct interval misses that by ``e^-9``, about once in 8,000 draws; for a normal
estimate (5.9 standard errors) never in practice. An estimate off by three times its stated error still fails. Coverage
itself is left to the tests that count hits over many releases (``fewest_hits``).
"""

from __future__ import annotations


def near_interval(lower: float, upper: float, true: float) -> bool:
    """True if ``true`` lies within the interval widened by its width on each side."""
    width = upper - lower
    return lower - width <= true <= upper + width


def near(row, true: float) -> bool:
    """:func:`near_interval` on a released row (a mapping or Series with ``lower`` and ``upper``)."""
    return near_interval(row["lower"], row["upper"], true)


def fewest_hits(runs: int, level: float = 0.95, chance: float = 1e-4) -> int:
    """The fewest covering intervals out of ``runs`` that a correct ``level`` interval reaches but with probability
    ``chance``: a coverage test fails on fewer hits, so an honest interval fails it about once in 10,000 runs while
    one that covers 85% of the time (at 300 runs) is still caught."""
    from scipy.stats import binom

    return int(binom.ppf(chance, runs, level))
