"""Within-bin shapes: fine public bins nested in a numeric column's coarse bins, and the sampler that spreads
synthetic values inside a coarse bin following a DP measurement of those fine bins.

The graphical model works on coarse cells (16 bins per numeric column by default: fewer cells keep the pair
marginals' noise low). Drawing a number uniformly inside its coarse bin turns every column's shape into a
staircase. A fit therefore also measures, with a documented share of the same epsilon, one fine one-way
marginal per numeric column (:class:`FineBins`: every coarse bin split into ``per_bin`` equal parts, or one
cell per integer when the public range is small) and decodes each coarse cell by drawing fine cells from the
noisy fine marginal restricted to that coarse bin (:func:`within_bin_cells`), then a value uniformly inside
the fine cell.

Every edge comes from the public bounds and the coarse bins; the only data-dependent input is the noisy
fine marginal (a DP measurement), so the decoded values are post-processing of the DP release.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workbench.channels.synth.domain import ColumnDomain
from workbench.channels.synth.sampling import rounded_counts

RANGE_WINDOW = 16        # a column's range grows while the next RANGE_WINDOW fine cells together hold
TAIL_NOISE_STDS = 1.0    # ... at least this many standard deviations of their summed noise
THIN_TAIL_NOISE_STDS = 2.0  # ... or this many when the noise is a small share of the rows (tail_stds)
NULL_NOISE_STDS = 4.0    # a categorical column's null cell is kept only above this many noise stds
RANGE_MARGIN_BINS = 2    # public bins kept beyond each end of the supported range (docs/synthesis.md) ...
NARROW_MARGIN_SHARE = 0.01  # ... 1 bin when a window of noise is under this share of the rows
TAIL_EXTRA_BINS = 1      # ... and the floor alone continues it this many public bins past the margin
TAIL_FALLING = 0.5       # a tail falling at least this much over its last two supported public bins ...
TAIL_MAX_RATIO = 0.1     # ... gives a margin bin at least its inner neighbour's mass times that ratio, <= this
FINE_PER_BIN = 8          # fine cells per coarse bin (16 coarse bins -> 128 fine cells)
MAX_INT_CELLS = 256       # an integer column keeps one fine cell per value up to this many values


@dataclass(frozen=True)
class FineBins:
    """One numeric column's fine cells: ``edges`` (fine cell ``k`` is ``(edges[k], edges[k+1]]``, the first
    one closed), ``cuts`` for OpenDP (the inner edges), and ``parent[k]``, the coarse cell holding fine cell
    ``k``. Every coarse cut is also a fine cut, so fine cells nest in coarse cells."""

    name: str
    type: str
    edges: tuple[float, ...]
    parent: tuple[int, ...]

    @property
    def cells(self) -> int:
        return len(self.parent)

    @property
    def cuts(self) -> list:
        inner = self.edges[1:-1]
        return [int(c) for c in inner] if self.type == "int" else list(inner)

    def labels(self) -> list[str]:
        if self.type == "int":
            return [_int_label(lo, hi, k == 0) for k, (lo, hi) in enumerate(zip(self.edges, self.edges[1:]))]
        return [f"{lo:g}-{hi:g}" for lo, hi in zip(self.edges, self.edges[1:])]

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Numbers -> fine cells (left-open bins, out-of-range values in the outermost cell)."""
        cuts = np.asarray(self.edges[1:-1], dtype=float)
        return np.searchsorted(cuts, np.asarray(values, dtype=float), side="left")

    def decode(self, fine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Fine cells -> values drawn uniformly inside each fine cell (integers: uniformly among its values)."""
        edges = np.asarray(self.edges, dtype=float)
        lo, hi = edges[fine], edges[fine + 1]
        if self.type == "int":
            low = np.where(fine == 0, np.ceil(lo), np.floor(lo) + 1).astype(np.int64)
            high = np.maximum(np.floor(hi).astype(np.int64), low)
            return rng.integers(low, high + 1)
        return rng.uniform(lo, hi)


def _int_label(lo: float, hi: float, first: bool) -> str:
    a = int(np.ceil(lo)) if first else int(np.floor(lo)) + 1
    b = int(np.floor(hi))
    return str(a) if a == b else f"{a}-{b}"


def fine_bins(coarse: ColumnDomain, per_bin: int = FINE_PER_BIN) -> FineBins | None:
    """The fine cells of a numeric column, or None when the coarse cells are already as fine (categorical
    columns, integer columns with one coarse cell per value)."""
    if coarse.edges is None:
        return None
    edges = [float(e) for e in coarse.edges]
    if coarse.type == "int":
        lo, hi = int(edges[0]), int(edges[-1])
        if hi - lo + 1 <= coarse.cells:
            return None
        if hi - lo + 1 <= MAX_INT_CELLS:
            return _nest(coarse, _int_edges(lo, hi))
        return _nest(coarse, _split(edges, per_bin, integer=True))
    return _nest(coarse, _split(edges, per_bin, integer=False))


def _int_edges(lo: int, hi: int) -> list[float]:
    """Edges of one cell per integer: [lo, lo], (lo, lo+1], ..., (hi-1, hi]."""
    return [float(lo), *(float(v) for v in range(lo, hi + 1))]


def _split(edges: list[float], per_bin: int, integer: bool) -> list[float]:
    out = [edges[0]]
    for a, b in zip(edges, edges[1:]):
        step = (b - a) / per_bin
        inner = [a + k * step for k in range(1, per_bin)]
        if integer:
            inner = sorted({float(np.floor(v)) for v in inner if a < np.floor(v) < b})
        out += [*inner, b]
    return out


def _nest(coarse: ColumnDomain, fine_edges: list[float]) -> FineBins | None:
    edges = np.asarray(fine_edges, dtype=float)
    if len(edges) - 1 <= coarse.cells:
        return None
    coarse_cuts = np.asarray(coarse.cuts, dtype=float)
    parent = np.searchsorted(coarse_cuts, edges[1:], side="left")   # a fine cell's upper edge names its bin
    return FineBins(coarse.name, coarse.type, tuple(float(e) for e in edges), tuple(int(p) for p in parent))


def supported(noisy: np.ndarray, noise_std: float, stds: float = TAIL_NOISE_STDS) -> np.ndarray:
    """The range of fine cells the DP marginal supports: grown one cell at a time from the centre of the
    ``RANGE_WINDOW`` cells with the largest noisy sum outwards, for as long as the next ``RANGE_WINDOW`` cells
    together hold at least ``stds`` standard deviations of their summed noise (:func:`tail_stds`). (The sampler then
    keeps :data:`RANGE_MARGIN_BINS` more public bins at each end: :func:`widened`.)

    Empty tails up to the public bounds get counts from the noise only; a range grown cell by cell would
    stop at the first thin cell, one grown to the outermost positive cell would reach the bounds. A window
    adds up the evidence of a thin real tail (its counts grow with the window, the noise with its square
    root), and a window of empty cells passes with probability 16% at 1 std, so the range rarely runs on
    into an empty tail (in the unit test: by more than 10 cells in 1% of draws, while cutting the thinnest
    ~4 cells of a real tail). Post-processing of the DP fine marginal.
    """
    noisy = np.asarray(noisy, dtype=float)
    cells = len(noisy)
    window = min(RANGE_WINDOW, cells)
    need = stds * noise_std * np.sqrt(window)
    # start at the middle of the window with the largest sum: a single noise spike in an empty region can top
    # the largest real cell of a spread-out column, a window of real cells is far above any window of noise
    lo = hi = int(np.argmax(np.convolve(noisy, np.ones(window), mode="same")))
    while hi + 1 < cells and noisy[hi + 1: hi + 1 + window].sum() >= need:
        hi += 1
    while lo > 0 and noisy[max(lo - window, 0): lo].sum() >= need:
        lo -= 1
    mask = np.zeros(cells, dtype=bool)
    mask[lo: hi + 1] = True
    return mask


def coarse_allowed(fine: FineBins, support: np.ndarray) -> np.ndarray:
    """Coarse cells holding at least one supported fine cell."""
    allowed = np.zeros(int(max(fine.parent)) + 1, dtype=bool)
    allowed[np.asarray(fine.parent)[support]] = True
    return allowed


def conditional_shares(fine: FineBins, noisy: np.ndarray, support: np.ndarray | None = None) -> list[np.ndarray]:
    """For each coarse cell, the shares of its fine cells: the noisy fine counts clipped at zero (and at
    unsupported cells) and normalised inside the coarse cell (uniform over its supported cells when the noise
    left nothing). Post-processing of the DP fine marginal."""
    support = np.ones(fine.cells, dtype=bool) if support is None else np.asarray(support, dtype=bool)
    counts = np.where(support, np.clip(np.asarray(noisy, dtype=float), 0.0, None), 0.0)
    parent = np.asarray(fine.parent)
    shares = []
    for b in range(int(parent.max()) + 1):
        part, ok = counts[parent == b], support[parent == b].astype(float)
        if part.sum() > 0:
            shares.append(part / part.sum())
        else:
            shares.append(ok / ok.sum() if ok.sum() > 0 else np.full(len(part), 1.0 / len(part)))
    return shares


def within_bin_cells(coarse: np.ndarray, fine: FineBins, shares: list[np.ndarray],
                     rng: np.random.Generator) -> np.ndarray:
    """Fine cells for rows whose coarse cells are ``coarse``: inside each coarse cell, ``n`` rows get fine
    cells in the proportions ``shares[b]`` to within one row (randomised rounding), in random order.

    Privacy guarantee: reads only coarse cells sampled from the fitted model, the public fine edges and the
    DP fine marginal's shares, plus fresh randomness; never the data.
    """
    coarse = np.asarray(coarse, dtype=np.int64)
    parent = np.asarray(fine.parent)
    out = np.empty(len(coarse), dtype=np.int64)
    for b in np.unique(coarse):
        rows = np.flatnonzero(coarse == b)
        children = np.flatnonzero(parent == b)       # never empty: fine cells nest in coarse cells
        counts = rounded_counts(shares[b], len(rows), rng)
        cells = np.repeat(children, counts)
        rng.shuffle(cells)
        out[rows] = cells
    return out


def coarse_measurements(fines: dict[str, FineBins], fine_noisy: dict[str, dict]) -> list:
    """Each fine marginal summed into its column's public bins, as an ``mbi`` identity measurement of the
    one-way marginal the model fits (noise std: the fine std times the square root of the most fine cells a
    public bin holds, an upper bound). The model's one-way information then includes the shapes' share of
    epsilon. Post-processing of the DP fine marginals."""
    from mbi import LinearMeasurement

    out = []
    for name, fine in fines.items():
        parent = np.asarray(fine.parent)
        noisy = np.bincount(parent, weights=np.asarray(fine_noisy[name]["noisy"], dtype=float),
                            minlength=int(parent.max()) + 1)
        std = fine_noisy[name]["noise_std"] * float(np.sqrt(np.bincount(parent).max()))
        out.append(LinearMeasurement(noisy, clique=(name,), stddev=std))
    return out


def margin_bins(noisy: np.ndarray, noise_std: float) -> int:
    """Public bins of margin for a column (:func:`widened`): :data:`RANGE_MARGIN_BINS`, or 1 when the most a cut
    tail can hold (one window of cells under ``TAIL_NOISE_STDS`` stds of their summed noise) is under
    :data:`NARROW_MARGIN_SHARE` of the rows (the noisy total). Many rows against the noise: the cut tails are
    thin and a wide margin only adds noise beyond the data (30k patients: SDMetrics quality 0.872 with 1 bin,
    0.854 with 2); few rows: the cut tails matter (4k bank customers: 2-way TVD 0.060 with 2 bins, 0.066 with 1).
    Post-processing of the DP fine marginal."""
    noisy = np.asarray(noisy, dtype=float)
    rows = max(float(noisy.sum()), 1.0)
    cut_at_most = TAIL_NOISE_STDS * noise_std * np.sqrt(min(RANGE_WINDOW, len(noisy)))
    return 1 if cut_at_most < NARROW_MARGIN_SHARE * rows else RANGE_MARGIN_BINS


def tail_stds(margin: int) -> float:
    """Noise stds a window must hold to extend the supported range: :data:`TAIL_NOISE_STDS`, or
    :data:`THIN_TAIL_NOISE_STDS` when the margin is 1 bin (many rows against the noise: a window the rule cuts
    holds under 1% of the rows, and the tapered tail restores a thin one). A window of empty cells passes 1 std
    with probability 16%, and the next windows share all but one cell, so a range that passes once tends to run
    on: at 30k patients 3 of 10 fits ran `visits` from the data's end (20) to 25-42. At 2 stds: 2.3%."""
    return THIN_TAIL_NOISE_STDS if margin < RANGE_MARGIN_BINS else TAIL_NOISE_STDS


def widened(fine: FineBins, support: np.ndarray, margin: int | None = None) -> np.ndarray:
    """``support`` grown by ``margin`` whole public bins at each end (and to the whole of its outermost
    bins). A real tail thinner than the noise is cut by :func:`supported`; the margin keeps its first public
    bins (where most of it lies), at the price of at most ``margin`` bins of noise beyond the data.
    Post-processing of the DP fine marginal."""
    margin = RANGE_MARGIN_BINS if margin is None else margin
    parent = np.asarray(fine.parent)
    kept = np.flatnonzero(coarse_allowed(fine, support))
    if len(kept) == 0:
        return np.asarray(support, dtype=bool)
    return (parent >= kept[0] - margin) & (parent <= kept[-1] + margin)


def tapered(fine: FineBins, noisy: np.ndarray, support: np.ndarray, wide: np.ndarray,
            mass: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fine_counts, coarse_weights)``: how a numeric column is sampled inside its widened range ``wide``
    (:func:`widened`), given ``mass``, the fitted model's one-way marginal of the column over its public bins.

    In the public bins holding supported cells the fine counts are the noisy ones clipped at zero (zero
    outside ``wide``) and the model's mass is kept (weight 1). The margin bins beyond them hold a tail thinner
    than the noise, where both the model's mass and the fine counts are mostly clipped noise: a fit put 0 or
    twice the real rows there, so the synthetic maximum jumped from fit to fit. When the tail is falling (the
    model's last supported bin holds at most :data:`TAIL_FALLING` of the one before: ratio ``r``), a margin bin
    ``j`` bins past it holds *at least* that bin's mass times ``min(r, TAIL_MAX_RATIO) ** j``, falling by the
    same ratio across its fine cells; a margin bin the model fills more keeps the model's mass; and
    :data:`TAIL_EXTRA_BINS` public bins past ``wide`` hold the floor alone (the thin real tail beyond a range
    the noise cut short). A column still dense at its edge (a hard bound in the data) gets no such floor. The
    weights tilt the model's one-way mass to that (0 elsewhere; the model's mass is positive everywhere, a
    log-linear model).

    Post-processing of the DP fine marginal and of the model fitted to DP measurements.
    """
    parent = np.asarray(fine.parent)
    support, wide = np.asarray(support, dtype=bool), np.asarray(wide, dtype=bool)
    counts = np.where(wide, np.clip(np.asarray(noisy, dtype=float), 0.0, None), 0.0)
    weights = coarse_allowed(fine, wide).astype(float)
    mass = np.clip(np.asarray(mass, dtype=float), 0.0, None)
    _taper_up(counts, weights, parent, support, wide, mass)
    down_counts, down_weights = counts[::-1].copy(), weights[::-1].copy()   # the lower tail, mirrored
    _taper_up(down_counts, down_weights, len(weights) - 1 - parent[::-1], support[::-1], wide[::-1], mass[::-1])
    return down_counts[::-1].copy(), down_weights[::-1].copy()


def _taper_up(counts: np.ndarray, weights: np.ndarray, parent: np.ndarray, support: np.ndarray,
              wide: np.ndarray, mass: np.ndarray) -> None:
    """The upper tail of :func:`tapered`, in place (the lower one runs on the mirrored arrays)."""
    hi = int(np.flatnonzero(support)[-1])
    edge = int(parent[hi])
    first = int(parent[support].min())
    if edge <= first or mass[edge - 1] <= 0 or mass[edge] > TAIL_FALLING * mass[edge - 1]:
        return   # no falling tail to continue: a column still dense at its edge may stop there
    ratio = min(mass[edge] / mass[edge - 1], TAIL_MAX_RATIO)
    floor = mass[edge]
    last = int(parent[wide].max())
    for b in range(edge + 1, min(last + TAIL_EXTRA_BINS, int(parent.max())) + 1):
        floor *= ratio
        cells = np.flatnonzero(parent == b)
        counts[cells] = ratio ** (np.arange(len(cells)) / len(cells))   # falling inside the bin too
        weights[b] = (max(mass[b], floor) if b <= last else floor) / max(mass[b], 1e-12)
