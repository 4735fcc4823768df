"""Step 5 of the shift analysis (`ops.shifts`), on the driver: histograms as probabilities, the
symmetric KL of every pair of groups, weighted by the basis' explained-variance ratios
(`ShiftResult`), and densities for pictures; `analyse` runs all five steps in one process.

The study's floor: empty bins get float32 epsilon before each histogram is renormalised. Densities
are a Gaussian KDE of the binned coefficients on the bin centres, bandwidth by Silverman's rule as
KDEpy computes it (the study used an FFT-based KDE).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ops.shifts.aggregates import DEFAULT_BINS, N_COMPONENTS, Basis, CoefficientRange, Histograms, Moments

EPSILON = float(np.finfo(np.float32).eps)
"""Probability given to empty bins before a histogram is renormalised (the study's floor)."""


# --- step 5: symmetric KL of every pair of groups ----------------------------------------------------


def probabilities(counts: np.ndarray) -> np.ndarray:
    """Histograms (last axis = bins) as probabilities; empty bins get EPSILON, then each histogram is
    renormalised to sum 1."""
    counts = np.asarray(counts, np.float64)
    p = counts / counts.sum(axis=-1, keepdims=True)
    p[counts == 0] = EPSILON
    return p / p.sum(axis=-1, keepdims=True)


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
    """Gaussian KDE of binned data on the bin centres (a density: integrates to ~1 over [lo, hi])."""
    counts = np.asarray(counts, np.float64)
    bandwidth = silverman_bandwidth(counts, lo, hi) if bandwidth is None else bandwidth
    width = (hi - lo) / len(counts)
    centres = lo + width * (np.arange(len(counts)) + 0.5)
    kernel = np.exp(-0.5 * ((centres[:, None] - centres[None, :]) / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
    return kernel @ counts / max(counts.sum(), 1), bandwidth


# --- the result ------------------------------------------------------------------------------------


@dataclass
class ShiftResult:
    """Everything one shift analysis produces; `kl[a, b, k]` is the symmetric KL of component k
    between groups a and b, `kl_weighted[a, b]` its sum weighted by the explained-variance ratios."""

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

    @classmethod
    def of(cls, axis: str, basis: Basis, value_range: CoefficientRange, histograms: Histograms, order: list[str] | None = None, **tags) -> ShiftResult:
        """Step 5 over the folded histograms: groups in `order` first (those present), then by label."""
        order = [g for g in order or [] if g in histograms.counts]
        groups = order + sorted(set(histograms.counts) - set(order))
        counts = np.stack([histograms.counts[g] for g in groups]) if groups else np.zeros((0, N_COMPONENTS, histograms.bins), np.int64)
        kl = symmetric_kl_matrix(probabilities(counts))
        return cls(
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
) -> ShiftResult:
    """The whole analysis (steps 1-5) of in-memory filters, with the same aggregates the Ray flow
    folds, block by block (a stored `basis` and its `value_range` may be given to skip steps 2 and 3)."""
    blocks = [slice(s, s + block_rows) for s in range(0, len(weights), block_rows)]
    if basis is None:
        moments = Moments()
        for b in blocks:
            moments = moments.merge(Moments.of(weights[b]))
        basis = moments.basis()
    if value_range is None:
        value_range = CoefficientRange()
        for b in blocks:
            value_range = value_range.merge(CoefficientRange.of(weights[b], basis))
    histograms = Histograms.empty(value_range, bins)
    for b in blocks:
        histograms = histograms.merge(Histograms.of(weights[b], codes[b], labels, basis, value_range, bins))
    return ShiftResult.of(axis, basis, value_range, histograms, order=order)
