"""The report's figures, one function per figure, each returning a matplotlib `Figure` (no pyplot, so
no global state: a notebook shows the returned figure, the HTML report embeds it as a PNG).

Inputs are analysis results, never the filters table: a `ShiftResult` (`flows.shifts.run_shifts`, or
one read back from DIR/analysis/ by `ops.report_data.stored_shift_result`), a `QualityReport`
(`flows.quality.quality_report`), or a bounded `FilterSample` (`ops.report_data.sample_filters`).

    basis_figure             the PCA basis as nine 3x3 images with explained-variance ratios
    kl_heatmap_figure        weighted symmetric KL between the groups of an axis, study order, sizes
    ridge_figure             nine coefficient densities per group (binned KDE, Silverman's bandwidth)
    drift_box_figure         upper-triangle KL values per axis (the study's "Drift D" figure)
    coefficient_density_figure  2-D log-density of the first two coefficients of sampled filters
    degeneracy_figure        per-layer sparsity against normalised variance entropy, coloured by flag
    worst_models_figure      the models with the largest share of degenerated layers, by flag
    filter_gallery_figure    sampled filters (peak-scaled) per group
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ops.metrics import DEGENERACY_LABELS
from ops.shifts import N_COMPONENTS, Basis, ShiftResult, peak_scaled

FILTER_COLORMAP = "RdBu_r"
"""Diverging: a filter's negative weights blue, positive red, zero white."""
FLAG_COLORS = {"healthy": "#9e9e9e", "sparse": "#1f77b4", "low_diversity": "#d62728", "random_looking": "#ff7f0e"}
"""One colour per degeneracy flag (a layer with two flags takes the first of DEGENERACY_LABELS)."""
MAX_GROUPS = 30
"""Groups drawn in figures with a row per group (ridges, galleries); tables hold every group."""


def _filter_images(axes, filters: np.ndarray) -> None:
    """Peak-scaled 3x3 filters as images on a shared [-1, 1] colour scale, without ticks."""
    for ax, f in zip(axes, filters):
        ax.imshow(f.reshape(3, 3), cmap=FILTER_COLORMAP, vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])


def basis_figure(basis: Basis) -> Figure:
    """The nine principal components as 3x3 images (each scaled to its own peak), titled with their
    explained-variance ratios."""
    fig = Figure(figsize=(10, 1.9), layout="constrained")
    axes = fig.subplots(1, N_COMPONENTS)
    components = basis.components / np.abs(basis.components).max(axis=1, keepdims=True)
    _filter_images(axes, components)
    for k, (ax, ratio) in enumerate(zip(axes, basis.explained_variance_ratio)):
        ax.set_title(f"c{k + 1}\n{ratio:.1%}", fontsize=9)
    fig.suptitle(f"PCA basis of {basis.n:,} peak-scaled filters (explained-variance ratio)", fontsize=10)
    return fig


def _group_labels(result: ShiftResult) -> list[str]:
    return [f"{group} (n={int(size):,})" for group, size in zip(result.groups, result.sizes)]


def kl_heatmap_figure(result: ShiftResult) -> Figure:
    """The explained-variance-weighted symmetric KL of every pair of groups, in the result's order
    (`ShiftResult.sorted`: the study's is by column mean, depth bins in order), labelled with their
    filter counts; values written in the cells when there are few groups."""
    matrix = result.kl_weighted
    n = len(result.groups)
    size = min(3 + 0.55 * n, 14)
    fig = Figure(figsize=(size + 2, size), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="viridis")
    labels = _group_labels(result)
    ax.set_xticks(range(n), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    if n <= 12:
        high = matrix.max() if matrix.size else 0
        for a in range(n):
            for b in range(n):
                if a != b:
                    ax.text(b, a, f"{matrix[a, b]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if matrix[a, b] > 0.6 * high else "white")
    fig.colorbar(image, ax=ax, label="weighted symmetric KL")
    ax.set_title(f"shift along {result.axis} ({int(result.sizes.sum()):,} filters, {result.histograms.bins} bins)", fontsize=10)
    return fig


def ridge_figure(result: ShiftResult, max_groups: int = MAX_GROUPS) -> Figure:
    """For each of the nine components, the density of its coefficient per group, stacked as ridges
    (the first `max_groups` groups in the result's order, first at the top): a Gaussian KDE of the
    stored histogram with Silverman's bandwidth (`ShiftResult.densities`), each scaled to its own peak."""
    order = result.groups[:max_groups]
    densities = result.densities()
    h = result.histograms
    fig = Figure(figsize=(12, 2 + 0.32 * len(order) * 3), layout="constrained")
    axes = fig.subplots(3, 3, sharey=True).ravel()
    colors = [f"C{i % 10}" for i in range(len(order))]
    for k, ax in enumerate(axes):
        width = (h.hi[k] - h.lo[k]) / h.bins
        x = h.lo[k] + width * (np.arange(h.bins) + 0.5)
        for row, group in enumerate(order):
            density = densities[group][0][k]
            peak = density.max()
            y = density / peak * 0.9 if peak > 0 else density
            base = len(order) - 1 - row
            ax.fill_between(x, base, base + y, color=colors[row], alpha=0.6, linewidth=0.8, edgecolor="black")
        ax.set_title(f"c{k + 1} ({result.basis.explained_variance_ratio[k]:.1%} of the variance)", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes[::3]:
        ax.set_yticks(range(len(order))[::-1], _group_labels(result)[:max_groups], fontsize=7)
    shown = f", first {len(order)} of {len(result.groups)} groups" if len(order) < len(result.groups) else ""
    fig.suptitle(f"coefficient densities per {result.axis} group (KDE of {h.bins}-bin histograms, Silverman bandwidth{shown})", fontsize=10)
    return fig


def upper_triangle(result: ShiftResult) -> np.ndarray:
    """The weighted KL of every distinct pair of groups (each pair once)."""
    return result.kl_weighted[np.triu_indices(len(result.groups), k=1)]


def drift_box_figure(results: Sequence[ShiftResult]) -> Figure:
    """One box per axis of the weighted KL between every pair of its groups, the pairs drawn as dots:
    the study's "Drift D" comparison of how far apart the groups of each meta-parameter lie."""
    fig = Figure(figsize=(2 + 1.6 * max(len(results), 1), 4), layout="constrained")
    ax = fig.subplots()
    values = [upper_triangle(r) for r in results]
    ax.boxplot([v if len(v) else [np.nan] for v in values], showfliers=False)
    rng = np.random.default_rng(0)
    for i, v in enumerate(values, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=10, color="black", alpha=0.6, zorder=3)
    ax.set_xticks(range(1, len(results) + 1), [f"{r.axis}\n({len(r.groups)} groups)" for r in results], fontsize=8)
    ax.set_ylabel("weighted symmetric KL between two groups")
    positive = [x for v in values for x in v if x > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_yscale("log")
    ax.set_title("drift: distance between the groups of each axis", fontsize=10)
    return fig


def coefficient_density_figure(coefficients: np.ndarray, basis: Basis, bins: int = 120) -> Figure:
    """2-D histogram of the first two coefficients of (sampled) filters as a log-scaled density."""
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.subplots()
    counts, xedges, yedges = np.histogram2d(coefficients[:, 0], coefficients[:, 1], bins=bins)
    area = (xedges[1] - xedges[0]) * (yedges[1] - yedges[0])
    density = np.ma.masked_equal(counts.T / max(len(coefficients), 1) / area, 0)
    image = ax.imshow(density, norm=LogNorm(), cmap="magma", origin="lower", aspect="auto", interpolation="nearest",
                      extent=(xedges[0], xedges[-1], yedges[0], yedges[-1]))
    fig.colorbar(image, ax=ax, label="density (log scale)")
    ratios = basis.explained_variance_ratio
    ax.set_xlabel(f"coefficient 1 ({ratios[0]:.1%} of the variance)")
    ax.set_ylabel(f"coefficient 2 ({ratios[1]:.1%} of the variance)")
    ax.set_title(f"first two coefficients of {len(coefficients):,} sampled filters", fontsize=10)
    return fig


def layer_flag(row: Mapping) -> str:
    """The flag a layer is coloured by: its first label in DEGENERACY_LABELS order, else 'healthy'."""
    return next((label for label in DEGENERACY_LABELS if row[label]), "healthy")


def degeneracy_figure(report) -> Figure:
    """Every selected 3x3 layer of a `QualityReport` as a dot: sparsity against normalised variance
    entropy, coloured by its flag, with the thresholds as lines."""
    layers, t = report.layers, report.thresholds
    flags = np.array([layer_flag(row) for row in layers[list(DEGENERACY_LABELS)].to_dict("records")])
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for flag, color in FLAG_COLORS.items():
        chosen = flags == flag
        if chosen.any():
            ax.scatter(layers["variance_entropy_norm"][chosen], layers["sparsity"][chosen], s=14, color=color,
                       alpha=0.75, label=f"{flag} ({int(chosen.sum())})")
    ax.axvline(t.low_diversity, color=FLAG_COLORS["low_diversity"], linestyle="--", linewidth=0.8)
    ax.axvline(t.random_looking, color=FLAG_COLORS["random_looking"], linestyle="--", linewidth=0.8)
    ax.axhline(t.sparse, color=FLAG_COLORS["sparse"], linestyle="--", linewidth=0.8)
    ax.set_xlabel("normalised variance entropy (0: one structure, ~1: random-looking)")
    ax.set_ylabel("sparsity (share of near-zero filters)")
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title(f"quality of {len(layers):,} 3x3 layers", fontsize=10)
    return fig


def worst_models_figure(report, top: int = 15) -> Figure:
    """The `top` models with the largest share of degenerated layers, as stacked bars of the share
    of their 3x3 layers carrying each flag (a layer with two flags counts in both)."""
    per_model = report.per_model.head(top).iloc[::-1]
    fig = Figure(figsize=(7, 1.2 + 0.3 * max(len(per_model), 1)), layout="constrained")
    ax = fig.subplots()
    left = np.zeros(len(per_model))
    for label in DEGENERACY_LABELS:
        share = per_model[f"share_{label}"].to_numpy(dtype=float)
        ax.barh(range(len(per_model)), share, left=left, color=FLAG_COLORS[label], label=label)
        left += share
    ax.set_yticks(range(len(per_model)), [f"{m} ({n} layers)" for m, n in zip(per_model["model_id"], per_model["n_3x3_layers"])], fontsize=8)
    ax.set_xlabel("share of the model's 3x3 layers")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"worst {len(per_model)} of {len(report.per_model)} models: share of degenerated layers", fontsize=10)
    return fig


def filter_gallery_figure(samples: Mapping[str, np.ndarray], title: str = "", columns: int = 12, max_groups: int = MAX_GROUPS) -> Figure:
    """A row of sampled filters per group (the first `max_groups`), each divided by its own peak
    (white: 0, red: +1, blue: -1), tiled into one image (one axes: quick to draw for many groups)."""
    groups = list(samples)[:max_groups]
    cell = 4  # a 3x3 filter and a blank line
    mosaic = np.full((max(len(groups), 1) * cell - 1, columns * cell - 1), np.nan)
    for row, group in enumerate(groups):
        filters = peak_scaled(np.asarray(samples[group], np.float32))[:columns]
        for col, f in enumerate(filters):
            mosaic[row * cell : row * cell + 3, col * cell : col * cell + 3] = f.reshape(3, 3)
    fig = Figure(figsize=(2.5 + 0.45 * columns, 0.5 + 0.45 * max(len(groups), 1)), layout="constrained")
    ax = fig.subplots()
    colormap = matplotlib.colormaps[FILTER_COLORMAP].with_extremes(bad="white")
    ax.imshow(mosaic, cmap=colormap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([row * cell + 1 for row in range(len(groups))], groups, fontsize=8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig
