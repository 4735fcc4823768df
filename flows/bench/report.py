"""Benchmark of the report: `filterdb bench report --filters 10M`.

On the synthetic DB of `filterdb bench shifts` (filters.lance and layers.lance, generated once under
the cache folder), completed once into a DB of its own (`report_N/`: filters.lance linked, layers
with their quality metrics computed from the filters, and a models row per model): the shift
analyses of the report's axes (`run_shift_axes`, one pass, stored), then `build_report` from the
stored analyses, step by step, with the driver's peak memory (after a warm-up run, so that imports
do not count). The target: the report takes at most 30 s beyond the analyses on 10M filters.
"""

from __future__ import annotations

import os
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa

from flows.bench.shifts import DEFAULT_CACHE, parse_count, synthetic_db
from flows.bench.timing import Column, FigureTable, PeakMemory, Ratio, best_of

HELP = "the HTML report of a synthetic DB, beyond the analyses it needs"
TARGET_SECONDS = 30.0


def report_db(n_filters: int, cache: Path = DEFAULT_CACHE) -> Path:
    """The synthetic DB of `flows.bench.shifts` as a complete DB: its filters.lance linked (not copied),
    its layers with the quality metrics of their filters (`ops.metrics.quality_of_layers`), a models row
    per model with its meta-parameters; built once, then reused."""
    from ops.shifts import weights_array
    from ops.store import LAYERS_SCHEMA, META_COLUMNS, MODELS_SCHEMA, QUALITY_COLUMNS

    source = synthetic_db(n_filters, cache)
    db = Path(cache) / f"report_{n_filters}"
    if (db / "models.lance").exists():
        return db
    db.mkdir(parents=True, exist_ok=True)
    if not (db / "filters.lance").exists():
        (db / "filters.lance").symlink_to(source / "filters.lance", target_is_directory=True)
    layers = lance.dataset(str(source / "layers.lance")).to_table().to_pylist()
    metrics, current, parts, meta = {}, None, [], {}
    # Rows come grouped by model and layer: each layer's filters are measured once they are complete.
    scanner = lance.dataset(str(source / "filters.lance")).scanner(columns=["model_id", "layer_index", "weights", *META_COLUMNS], batch_size=1 << 17)
    for batch in scanner.to_batches():
        ids, layer_index = batch.column("model_id").to_numpy(zero_copy_only=False), batch.column("layer_index").to_numpy()
        weights = weights_array(batch.column("weights"))
        starts = np.flatnonzero(np.r_[True, (ids[1:] != ids[:-1]) | (layer_index[1:] != layer_index[:-1])])
        for begin, end in zip(starts, np.r_[starts[1:], len(ids)]):
            key = (ids[begin], int(layer_index[begin]))
            if key != current and parts:
                metrics[current] = _layer_metrics(parts)
                parts = []
            current = key
            parts.append(weights[begin:end])
            if key[0] not in meta:  # once per model, not per layer
                meta[key[0]] = {name: batch.column(name)[int(begin)].as_py() for name in META_COLUMNS}
    if parts:
        metrics[current] = _layer_metrics(parts)
    for row in layers:
        row.update(metrics[(row["model_id"], row["layer_index"])])
    lance.write_dataset(pa.Table.from_pylist(layers, schema=LAYERS_SCHEMA), str(db / "layers.lance"), mode="overwrite")
    per_model = {}
    for row in layers:
        model = per_model.setdefault(row["model_id"], {"model_id": row["model_id"], "source": "synthetic", "status": "ok",
                                                       "n_conv_layers": 0, "n_filters_3x3": 0, **meta[row["model_id"]]})
        model["n_conv_layers"] += 1
        model["n_filters_3x3"] += row["n_filters"]
    lance.write_dataset(pa.Table.from_pylist(list(per_model.values()), schema=MODELS_SCHEMA), str(db / "models.lance"), mode="overwrite")
    assert set(QUALITY_COLUMNS) <= set(metrics[current])
    return db


def _layer_metrics(parts: list[np.ndarray]) -> dict:
    """The quality metrics of one synthetic layer's filters, as one output channel over all of them
    (the synthetic DB has no channel structure: orthogonality, which needs rows, is then NaN)."""
    import torch

    from ops.metrics import quality_of_layers

    return quality_of_layers([torch.from_numpy(np.concatenate(parts)).reshape(1, -1, 3, 3)])[0]


def run_report_benchmark(n_filters: int, axes: list[str], cache: Path = DEFAULT_CACHE, repeats: int = 2, out: Path | None = None) -> dict:
    """The figures of the benchmark in one dict (seconds, bytes)."""
    from flows.ray_runtime import ensure_ray
    from flows.report import build_report
    from flows.shifts import run_shift_axes

    db = report_db(n_filters, cache)
    out = out or db / "report"
    figures = {"filters": n_filters, "axes": axes, "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]}
    ensure_ray()
    analyses = best_of(lambda: run_shift_axes(db, axes, progress=False, reuse=False))
    figures["analyses_s"] = analyses.seconds
    build_report(db, out, axes=axes, stored_only=True)  # warm-up: imports (torch, matplotlib) are not the report's memory
    with PeakMemory() as memory:
        report = best_of(lambda t: build_report(db, out, axes=axes, stored_only=True, timings=t), repeats, steps=True)
    figures["report_s"], figures["report_steps"] = report.seconds, report.steps
    figures["report_peak_rss_growth"] = memory.peak - memory.baseline
    figures["report_bytes"] = report.result.stat().st_size
    figures["report_path"] = str(report.result)
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


def report_table(figures: dict) -> FigureTable:
    n, mib = figures["filters"], 1 << 20
    analyses = f"analyses: shifts --by {','.join(figures['axes'])}"
    table = FigureTable(f"filterdb report: {n:,} filters, {figures['cpus']} CPUs (load average {figures['load_average_before']:.1f} before, "
                        f"{figures['load_average_after']:.1f} after)",
                        [Column("seconds", "seconds", "{:.2f} s".format), Column("filters/s", "rate", lambda r: f"{r / 1e6:,.2f} M"),
                         Ratio("÷ analyses", "seconds"), Ratio(f"÷ target {TARGET_SECONDS:.0f} s", "seconds", to="target")],
                        baseline=analyses, name_header="what", extra={"figures": figures})
    table.add(analyses, {"seconds": figures["analyses_s"], "rate": n / figures["analyses_s"]})
    table.add("report --stored-only (from the stored analyses)",
              {"seconds": figures["report_s"], "rate": n / figures["report_s"], "target": TARGET_SECONDS})
    steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in figures["report_steps"].items())
    table.notes.append(f"analyses: run_shift_axes, one pass over the filters for all axes, tables stored; report, best run: {steps}")
    table.notes.append(f"report: driver's peak RSS grew by {figures['report_peak_rss_growth'] / mib:,.0f} MiB (the filters' weights are "
                       f"{n * 36 / mib:,.0f} MiB); the page is {figures['report_bytes'] / mib:,.1f} MiB: {figures['report_path']}")
    return table


def add_arguments(parser) -> None:
    parser.add_argument("--filters", default="10M", help="number of synthetic filters, e.g. 1M, 10M (default 10M)")
    parser.add_argument("--axes", default="task,visual_category,depth", help="axes of the report (default task,visual_category,depth)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"folder of the synthetic DBs (default {DEFAULT_CACHE})")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the report, best kept (default 2)")


def run(args) -> int:
    figures = run_report_benchmark(parse_count(args.filters), args.axes.split(","), cache=args.cache, repeats=args.repeats)
    report_table(figures).report(args.json)
    return 0
