"""Step 5 of the shift analysis (`ops.shifts`), on the driver: histograms as probabilities, the
symmetric KL of every pair of groups, weighted by the basis' explained-variance ratios
(`ShiftResult`), and densities for pictures; `analyse` runs all five steps in one process.

The study's floor: every histogram is taken as a density, count / (n * bin width) in float64, its
zero bins are set to float32 epsilon, and it is renormalised to sum 1. Densities for pictures are a
Gaussian KDE of the binned coefficients averaged over each bin, bandwidth by Silverman's rule as
KDEpy computes it (the study used an FFT-based KDE).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.special import ndtr

from ops.shifts.aggregates import DEFAULT_BINS, GLOBAL_RANGE, N_COMPONENTS, AxesHistograms, Basis, CoefficientRange, Histograms, Moments, ScaledBlock

EPSILON = float(np.finfo(np.float32).eps)
"""Density given to empty bins before a histogram is renormalised (the study's floor)."""

SORTS = ("mean", "name", "none")
"""Orders of the groups: by the mean of their column of the weighted matrix (ascending, as the study
shows them), by label, or the axis' own order (depth bins in order; other axes by label)."""


def default_sort(axis_has_order: bool) -> str:
    """The study's display: depth bins in their order, the groups of other axes by column mean."""
    return "none" if axis_has_order else "mean"


# --- step 5: symmetric KL of every pair of groups ----------------------------------------------------


def probabilities(counts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Histograms (..., 9, bins) as the study takes them: the density count / (n * width) of every
    component (`widths`: (9,) bin widths), in float64, zero bins set to EPSILON, renormalised to sum 1."""
    counts = np.asarray(counts, np.float64)
    widths = np.asarray(widths, np.float64)[:, None]
    density = counts / (counts.sum(axis=-1, keepdims=True) * widths)
    density[counts == 0] = EPSILON
    return density / density.sum(axis=-1, keepdims=True)


def symmetric_kl_matrix(p: np.ndarray) -> np.ndarray:
    """(groups, 9, bins) probabilities -> (groups, groups, 9) symmetric KL, KL(a||b) + KL(b||a) with
    natural logs, of every pair, from one matrix product per component: KL(a||b) + KL(b||a) = H[a,a] + H[b,b] - H[a,b] - H[b,a] with
    H[a,b] = sum p_a log p_b."""
    by_component = p.transpose(1, 0, 2)
    cross = by_component @ np.log(by_component).transpose(0, 2, 1)  # (9, groups, groups)
    own = np.diagonal(cross, axis1=1, axis2=2)
    kl = own[:, :, None] + own[:, None, :] - cross - cross.transpose(0, 2, 1)
    kl = np.clip(kl, 0, None).transpose(1, 2, 0)
    kl[np.arange(len(p)), np.arange(len(p))] = 0
    return kl


# --- densities for pictures ------------------------------------------------------------------------


def silverman_bandwidth(counts: np.ndarray, lo: float, hi: float) -> float:
    """Silverman's rule as KDEpy writes it, min(std, IQR / 1.349) * (3n / 4)^(-1/5), with the standard
    deviation and the quartiles taken from the binned data (bin centres, linear within a bin)."""
    counts = np.asarray(counts, np.float64)
    n = counts.sum()
    if n < 2:
        return (hi - lo) / len(counts)
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    mean = (counts * centres).sum() / n
    std = np.sqrt((counts * (centres - mean) ** 2).sum() / (n - 1))
    cdf = np.concatenate([[0.0], np.cumsum(counts) / n])
    q25, q75 = np.interp([0.25, 0.75], cdf, lo + width * np.arange(len(counts) + 1))
    sigma = min(std, (q75 - q25) / 1.349) if q75 > q25 else std
    if sigma <= 0:
        sigma = width
    return float(sigma * (3 * n / 4) ** (-1 / 5))


def binned_kde(counts: np.ndarray, lo: float, hi: float, bandwidth: float | None = None) -> tuple[np.ndarray, float]:
    """Gaussian KDE of binned data (each bin's count at its centre), averaged over each bin: a density
    on the bins whose integral over [lo, hi] is the kernel mass inside the range (about 1), also when
    the bandwidth is narrower than a bin, where values at the bin centres alone would not be."""
    counts = np.asarray(counts, np.float64)
    bandwidth = silverman_bandwidth(counts, lo, hi) if bandwidth is None else bandwidth
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    edges = lo + width * np.arange(len(counts) + 1)
    mass = np.diff(ndtr((edges[:, None] - centres[None, :]) / bandwidth), axis=0)  # (bins, bins): bin i's share of the kernel at centre j
    return mass @ counts / (max(counts.sum(), 1) * width), bandwidth


# --- the result ------------------------------------------------------------------------------------


@dataclass
class ShiftResult:
    """Everything one shift analysis of one axis produces; `kl[a, b, k]` is the symmetric KL of
    component k between groups a and b, `kl_weighted[a, b]` its sum weighted by the explained-variance
    ratios. `range_mode`, `histograms.bins` and `basis_selection` are the options that change the
    numbers; `sort` is the order of `groups`."""

    axis: str
    groups: list[str]
    sizes: np.ndarray
    basis: Basis
    value_range: CoefficientRange
    histograms: Histograms
    kl: np.ndarray
    kl_weighted: np.ndarray
    selection: str | None = None
    basis_selection: str | None = None
    db_version: int | None = None
    sort: str = "none"

    @property
    def range_mode(self) -> str:
        return self.histograms.range_mode

    @classmethod
    def of(cls, axis: str, basis: Basis, value_range: CoefficientRange, histograms: Histograms, order: list[str] | None = None,
           sort: str | None = None, **tags) -> ShiftResult:
        """Step 5 over the folded histograms, the groups in `order` (those present; the rest by label),
        then sorted by `sort` (SORTS; None: `default_sort`)."""
        order = [g for g in order or [] if g in histograms.counts]
        groups = order + sorted(set(histograms.counts) - set(order))
        counts = np.stack([histograms.counts[g] for g in groups]) if groups else np.zeros((0, N_COMPONENTS, histograms.bins), np.int64)
        kl = symmetric_kl_matrix(probabilities(counts, histograms.widths))
        result = cls(
            axis=axis,
            groups=groups,
            sizes=counts[:, 0].sum(axis=1),
            basis=basis,
            value_range=value_range,
            histograms=histograms,
            kl=kl,
            kl_weighted=kl @ basis.explained_variance_ratio,
            **tags,
        )
        return result.sorted(default_sort(bool(order)) if sort is None else sort)

    def sorted(self, how: str) -> ShiftResult:
        """The same result with its groups in the order `how` (SORTS): 'mean' by the mean of their
        column of `kl_weighted`, ascending (ties by label); 'name' by label; 'none' as they are."""
        if how not in SORTS:
            raise ValueError(f"sort {how!r}: choose one of {', '.join(SORTS)}")
        if how == "none":
            return replace(self, sort=how)
        if how == "name":
            order = sorted(range(len(self.groups)), key=lambda g: self.groups[g])
        else:
            means = self.kl_weighted.mean(axis=0) if len(self.groups) else np.zeros(0)
            order = sorted(range(len(self.groups)), key=lambda g: (means[g], self.groups[g]))
        order = np.array(order, np.intp)
        return replace(self, groups=[self.groups[g] for g in order], sizes=self.sizes[order], kl=self.kl[np.ix_(order, order)],
                       kl_weighted=self.kl_weighted[np.ix_(order, order)], sort=how)

    def densities(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Binned Gaussian KDE (Silverman bandwidth) per group: (9, bins) densities and (9,) bandwidths."""
        out = {}
        for g in self.groups:
            rows = [binned_kde(self.histograms.counts[g][k], self.histograms.lo[k], self.histograms.hi[k]) for k in range(N_COMPONENTS)]
            out[g] = (np.stack([r[0] for r in rows]), np.array([r[1] for r in rows]))
        return out


# --- the single-process path: steps 1-5 in one process --------------------------------------------


def analyse(
    weights: np.ndarray,
    codes: np.ndarray,
    labels: list[str],
    axis: str = "group",
    bins: int = DEFAULT_BINS,
    basis: Basis | None = None,
    value_range: CoefficientRange | None = None,
    order: list[str] | None = None,
    block_rows: int = 1 << 20,
    range_mode: str = GLOBAL_RANGE,
    sort: str | None = None,
) -> ShiftResult:
    """The whole analysis (steps 1-5) of in-memory filters, with the same aggregates the Ray flow
    folds, block by block: by default the study's recipe (one range for all components). A stored
    `basis` and its `value_range` may be given to skip steps 2 and 3."""
    blocks = [ScaledBlock.of(weights[s : s + block_rows], [(codes[s : s + block_rows], labels)]) for s in range(0, len(weights), block_rows)]
    if basis is None:
        moments = Moments()
        for block in blocks:
            moments = moments.merge(Moments.of_block(block))
        basis = moments.basis()
    if value_range is None:
        value_range = CoefficientRange()
        for block in blocks:
            value_range = value_range.merge(CoefficientRange.of_block(block, basis))
    histograms = Histograms.empty(value_range, bins, range_mode)
    for block in blocks:
        histograms = histograms.merge(AxesHistograms.of_block(block, basis, value_range, bins, range_mode).axes[0])
    return ShiftResult.of(axis, basis, value_range, histograms, order=order, sort=sort)
