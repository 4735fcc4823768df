"""The report as one self-contained HTML page: every figure of `ops.figures` embedded as a base64 PNG,
with a caption that says what it shows and how to read it, the heatmaps' numbers in tables beside
them, and the DB snapshot and options it was made from. No script, no stylesheet or font fetched:
the page opens offline, from a mail attachment or a CI artefact alike.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field

from matplotlib.figure import Figure

from ops import figures
from ops.metrics import DEGENERACY_LABELS
from ops.report_data import DBSummary, FilterSample
from ops.shifts import ShiftResult

PNG_DPI = 110

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9em; color: #444; max-width: 60em; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.pair { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.pair figure { flex: 1 1 500px; } .pair .numbers { flex: 1 1 400px; overflow-x: auto; }
.meta td, .meta th { text-align: left; } .note { color: #8a4b00; }
code { background: #f4f4f4; padding: 0 .2em; }
"""


@dataclass
class ReportContent:
    """Everything a report shows, computed beforehand (flows/report.py gathers it)."""

    summary: DBSummary
    options: dict[str, str]
    results: dict[str, ShiftResult]
    missing: dict[str, str] = field(default_factory=dict)  # axis -> why it is absent (plain text), or the command computing it
    quality: object | None = None  # a flows.quality.QualityReport
    quality_note: str = ""
    sample: FilterSample | None = None


def png_img(fig: Figure, alt: str) -> str:
    """The figure as an <img> holding its PNG (base64)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=PNG_DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def figure_html(fig: Figure, caption: str, alt: str) -> str:
    """The figure with its caption (HTML, escaped by the caller)."""
    return f"<figure>{png_img(fig, alt)}<figcaption>{caption}</figcaption></figure>"


class Cell(str):
    """A <td> already written (with attributes), passed through `table_html` unescaped."""


def table_html(headers: list[str] | None, rows: list[list], attributes: str = "") -> str:
    """A table of escaped cells (a `Cell` is passed through as written); no header row for None."""
    head = "<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr></thead>" if headers else ""
    body = "".join("<tr>" + "".join(c if isinstance(c, Cell) else f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attributes}>{head}<tbody>{body}</tbody></table>"


def kl_table_html(result: ShiftResult) -> str:
    """The heatmap's numbers in the heatmap's order: each cell shows the weighted KL to 3 decimals and
    holds it exactly in `data-value` (with the pair's groups in `data-a`, `data-b`)."""
    order = range(len(result.groups))
    rows = []
    for a in order:
        cells = [result.groups[a], f"{int(result.sizes[a]):,}"]
        for b in order:
            if a == b:
                cells.append(Cell("<td>&middot;</td>"))
                continue
            value = float(result.kl_weighted[a, b])
            cells.append(Cell(f'<td data-a="{html.escape(result.groups[a])}" data-b="{html.escape(result.groups[b])}" '
                              f'data-value="{value!r}">{value:.3f}</td>'))
        rows.append(cells)
    headers = ["group", "filters", *[f"{i + 1}" for i in range(len(order))]]
    legend = ", ".join(f"{i + 1}: {html.escape(result.groups[g])}" for i, g in enumerate(order))
    attributes = f'class="kl" data-axis="{html.escape(result.axis)}"'
    return f'<div class="numbers">{table_html(headers, rows, attributes)}<p><small>columns: {legend}</small></p></div>'


def _summary_section(summary: DBSummary, options: dict[str, str]) -> str:
    meta = [[name, value] for name, value in options.items()]
    meta += [[f"{table}.lance", f"version {summary.versions[table]}, {summary.rows[table]:,} rows" if summary.versions[table] is not None else "absent"]
             for table in ("models", "layers", "filters")]
    parts = ["<h2>DB</h2>", table_html(None, meta, 'class="meta"'),
             f"<p>{summary.models_ok} models stored complete (status ok), {len(summary.failed)} failed; "
             f"{summary.rows['filters']:,} 3x3 filters in {summary.rows['layers']:,} convolution layers.</p>"]
    counted = '<div class="pair">'
    for column, counts in summary.counts.items():
        counted += f"<div>{table_html([column, 'models'], [list(c) for c in counts])}</div>"
    parts.append(counted + "</div>")
    if summary.failed:
        parts.append("<h3>Failed models</h3>" + table_html(["model", "error"], [list(f) for f in summary.failed]))
    return "\n".join(parts)


def _shift_sections(content: ReportContent) -> str:
    parts = []
    results = list(content.results.values())
    if results:
        basis = results[0].basis
        parts += ["<h2>PCA basis</h2>", figure_html(
            figures.basis_figure(basis),
            f"The nine principal components of the {basis.n:,} peak-scaled filters of the selection "
            f"(<code>{html.escape(results[0].basis_selection or 'all filters')}</code>), each shown as a 3x3 image "
            "scaled to its own peak (red positive, blue negative, white zero), with the share of the variance it "
            "explains. Every shift below is measured in this basis; the first few components carrying most of "
            "the variance means the filters are well described by a few structures.", "PCA basis")]
    for axis, result in content.results.items():
        sorted_how = {"none": "in the axis' own order (depth bins in order, other axes by name)", "name": "by name",
                      "mean": "sorted by the mean of their column, lowest (closest to all others) first, as in the study"}[result.sort]
        parts += [f"<h2>Shift along {html.escape(axis)}</h2>", '<div class="pair">', figure_html(
            figures.kl_heatmap_figure(result),
            f"Weighted symmetric KL divergence between the coefficient distributions of every pair of "
            f"{html.escape(axis)} groups (the sum over the nine components of KL(A||B) + KL(B||A), weighted by "
            f"the explained-variance ratios), groups {sorted_how}, each labelled with its filter count. 0 means "
            "identical distributions; the larger, the further apart. Groups of few filters give noisy values. "
            "The table holds the same numbers.", f"KL heatmap along {axis}"), kl_table_html(result), "</div>",
            figure_html(
                figures.ridge_figure(result),
                f"Density of each component's coefficient per {html.escape(axis)} group, one ridge per group in the "
                f"heatmap's order, each scaled to its own peak: a Gaussian KDE (Silverman's bandwidth) of the "
                f"{result.histograms.bins}-bin histogram the shift is computed from. Ridges that differ in shape "
                "or position are what the KL above measures.", f"ridge plots along {axis}")]
    for axis, why in content.missing.items():
        parts += [f"<h2>Shift along {html.escape(axis)}</h2>", f'<p class="note">{html.escape(why)}</p>']
    if results:
        parts += ["<h2>Drift</h2>", figure_html(
            figures.drift_box_figure(results),
            "For each axis, the weighted KL between every pair of its groups (a dot per pair, the box their "
            "quartiles): the study's drift comparison. An axis whose box sits higher separates the filters "
            "more; a log scale is used when the values span more than a factor of 100.", "drift box plots")]
    return "\n".join(parts)


def _density_section(content: ReportContent) -> str:
    sample, results = content.sample, list(content.results.values())
    if sample is None or not results or not len(sample.weights):
        return ""
    coefficients = results[0].basis.project(sample.weights)
    return "<h2>First two coefficients</h2>" + figure_html(
        figures.coefficient_density_figure(coefficients, results[0].basis),
        f"2-D histogram of the first two coefficients of {len(sample.weights):,} filters drawn at random from "
        f"the {sample.selected:,} of the selection, as a density on a log colour scale: bright where filters "
        "are common, dark where rare, white where the sample has none.", "2-D coefficient density")


def _quality_section(content: ReportContent, top: int = 15) -> str:
    report = content.quality
    if report is None:
        return f'<h2>Layer quality</h2><p class="note">{html.escape(content.quality_note)}</p>'
    t = report.thresholds
    parts = ["<h2>Layer quality</h2>", figure_html(
        figures.degeneracy_figure(report),
        f"Every selected 3x3 layer: its normalised variance entropy (x) against its sparsity (y), coloured by "
        f"its flag. Normalised variance entropy near 0: the layer's filters are all alike (degenerated; "
        f"flagged low_diversity below {t.low_diversity}); near or above 1: they look random, as if untrained "
        f"(random_looking above {t.random_looking}). Sparsity is the share of near-zero filters (sparse above "
        f"{t.sparse}). Layers of fewer than about 64 filters read high on the entropy, so their flags are weak "
        "evidence.", "degeneracy overview"), figure_html(
        figures.worst_models_figure(report, top),
        f"The {min(top, len(report.per_model))} models with the largest share of degenerated 3x3 layers, by flag; "
        "their flagged layers are listed below.", "worst models")]
    worst = report.per_model.head(top)["model_id"].tolist()
    layers = report.layers[report.layers["model_id"].isin(worst) & report.layers[list(DEGENERACY_LABELS)].any(axis=1)]
    layers = layers.assign(rank=layers["model_id"].map({m: i for i, m in enumerate(worst)})).sort_values(["rank", "layer_index"])
    rows = [[r.model_id, f"{r.layer_index} {r.layer_name}", r.kind, r.n_filters, f"{r.sparsity:.2f}", f"{r.variance_entropy_norm:.2f}",
             ", ".join(label for label in DEGENERACY_LABELS if getattr(r, label))] for r in layers.itertuples()]
    parts.append(table_html(["model", "layer", "kind", "filters", "sparsity", "VE norm", "flags"], rows, 'class="flagged"')
                 if rows else "<p>None of these models has a flagged layer.</p>")
    return "\n".join(parts)


def _gallery_section(content: ReportContent) -> str:
    sample = content.sample
    if sample is None:
        return ""
    parts = ["<h2>Sample filters</h2>"]
    for axis, groups in sample.groups.items():
        if groups:
            parts.append(figure_html(
                figures.filter_gallery_figure(groups, f"sampled filters per {axis} group"),
                f"Up to {max(len(v) for v in groups.values())} filters drawn at random from each {html.escape(axis)} "
                "group, each divided by its own peak (red +1, blue -1, white 0), as the analysis sees them.",
                f"filter gallery per {axis}"))
    return "\n".join(parts)


def report_html(content: ReportContent) -> str:
    """The whole page."""
    title = f"filterdb report: {content.summary.path}"
    body = [f"<h1>{html.escape(title)}</h1>", _summary_section(content.summary, content.options), _shift_sections(content),
            _density_section(content), _quality_section(content), _gallery_section(content)]
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>")
