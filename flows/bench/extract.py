"""Benchmark of extraction: the single-process loop against the Ray pipeline with 1 and 2 actors.

Prints models/min and filters/s of each, the ratio to the loop, Ray's fixed cost (start to first
stored model, Ray start included; Ray's own start and an actor's imports also apart) apart from the
per-model rate after it, and the driver's peak memory. First it measures the layer-metrics step of extraction on the same models: every 3x3
layer of a model measured together (`quality_of_layers`, as extraction does) against one layer at
a time (`layer_quality`), with the largest difference of their values.
Run: `filterdb bench extract [--demo-catalog demo_out/catalog.csv] [--metrics-only]`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from flows.bench.timing import Column, FigureTable, PeakMemory, Ratio, best_of, best_of_each
from ops.catalog import read_catalog, write_catalog

HELP = "single-process loop vs Ray pipeline with 1 and 2 actors"

BENCH_ARCHS = [
    "resnet10t", "resnet14t", "resnet18", "resnet26", "resnet34", "resnet18d", "mobilenetv2_050",
    "mobilenetv2_100", "mobilenetv3_small_050", "mobilenetv3_small_075", "mobilenetv3_small_100",
    "mobilenetv3_large_100", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0", "regnetx_002",
    "regnetx_004", "regnetx_006", "regnety_002", "regnety_004", "ghostnet_100", "mnasnet_100", "densenet121",
    "vgg11", "dla34", "convnext_atto", "convnext_femto", "rexnet_100", "lcnet_050", "lcnet_100", "tinynet_a",
    "tinynet_b", "tinynet_c", "tinynet_d", "tinynet_e", "fbnetc_100", "spnasnet_100", "semnasnet_100",
    "mixnet_s", "repvgg_a0", "nf_resnet26", "hardcorenas_a",
]


def bench_catalog(folder: Path, archs: list[str], demo_catalog: str | None) -> Path:
    rows = [{"model_id": arch, "source": "timm", "uri": arch, "pretrained": "false", "family": arch,
             "task": "untrained"} for arch in archs]
    if demo_catalog:
        for entry in read_catalog(demo_catalog):
            rows.append({"model_id": entry.model_id, "source": entry.source, "uri": entry.uri,
                         "arch": entry.arch or "", "input_size": "x".join(map(str, entry.input_size or ())),
                         "pretrained": str(entry.pretrained).lower(), "seed": str(entry.seed), **entry.meta})
    path = folder / "bench_catalog.csv"
    write_catalog(rows, path)
    return path


def actor_import_seconds() -> float:
    """Seconds a fresh Python process takes to import what an extraction actor imports (torch, timm,
    the extraction code): what each actor pays before its first model."""
    import subprocess
    import sys
    import time

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, timm, ops.extraction"], check=True)
    return time.perf_counter() - started


def _run(name: str, extract, catalog: Path, folder: Path) -> dict:
    db = folder / f"db_{name}"
    shutil.rmtree(db, ignore_errors=True)
    with PeakMemory() as memory:
        timing = best_of(lambda: extract(str(catalog), str(db)))
    summary, seconds = timing.result, timing.seconds
    n = len(summary.stored)
    first = summary.first_stored_after or seconds
    steady = (n - 1) / (seconds - first) * 60 if n > 1 and seconds > first else float("nan")
    return {"name": name, "models": n, "failed": len(summary.failed), "seconds": seconds,
            "models_per_min": n / seconds * 60, "filters_per_s": summary.n_filters / seconds,
            "first_model_s": first, "steady_models_per_min": steady, "driver_growth_mib": (memory.peak - memory.baseline) / 2**20}


def metrics_figures(catalog: Path, repeats: int = 3) -> FigureTable:
    """Seconds of the layer-metrics step over the catalog's models, batched per model and per layer."""
    import numpy as np
    import torch

    from ops.metrics import layer_quality, quality_of_layers
    from ops.sources import load_layers
    from ops.store import QUALITY_COLUMNS

    models = [[torch.from_numpy(layer.weight) for layer in load_layers(entry).layers if layer.weight.shape[2:] == (3, 3)]
              for entry in read_catalog(catalog)]
    layers, filters = sum(map(len, models)), sum(w.shape[0] * w.shape[1] for ws in models for w in ws)
    # interleaved rounds, so that load from other processes hits both alike
    batched, per_layer = best_of_each([lambda: [quality_of_layers(ws) for ws in models],
                                       lambda: [[layer_quality(w) for w in ws] for ws in models]], repeats)
    difference = max((abs(a[c] - b[c]) for ws_a, ws_b in zip(batched.result, per_layer.result) for a, b in zip(ws_a, ws_b)
                      for c in QUALITY_COLUMNS if np.isfinite(a[c]) and np.isfinite(b[c])), default=0.0)
    table = FigureTable(f"layer metrics of {len(models)} models ({layers} 3x3 layers, {filters:,} filters), best of {repeats}",
                        [Column("seconds", "seconds", "{:.3f}".format), Column("layers/s", "layers_per_s", "{:,.0f}".format),
                         Ratio("speed vs one layer at a time", "seconds", inverted=True)],
                        baseline="one layer at a time", name_header="metrics step",
                        notes=[f"largest difference between the two: {difference:.2e}"])
    for name, timing in (("one layer at a time", per_layer), ("a model's layers together (extraction)", batched)):
        table.add(name, {"seconds": timing.seconds, "layers_per_s": layers / timing.seconds})
    return table


def run_extract_benchmark(archs: list[str] | None = None, demo_catalog: str | None = None,
                          workdir: str | None = None, actor_counts: tuple[int, ...] = (1, 2)) -> list[dict]:
    """Extracts the catalog of `archs` (and of `demo_catalog`) with each contender into a fresh DB
    under `workdir`; one dict of figures per run, the loop's first."""
    import time

    import ray

    from flows.extract import extract_catalog, extract_catalog_local
    from flows.ray_runtime import ensure_ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(workdir or tempfile.mkdtemp(prefix="filterdb-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    catalog = bench_catalog(folder, archs or BENCH_ARCHS, demo_catalog)
    Console().print(f"catalog: {len(read_catalog(catalog))} models ({catalog})")
    results = [_run("loop", lambda c, d: extract_catalog_local(c, d, progress=False), catalog, folder)]
    for actors in actor_counts:
        ray.shutdown()  # each Ray run pays its own start, reported as the fixed cost

        ray_start = {}

        def ray_extract(c, d, actors=actors):
            started = time.perf_counter()
            ensure_ray(num_cpus=max(2, actors))
            ray_start["s"] = time.perf_counter() - started
            # commit every second, so that "first stored model" is not held back by the 5 s default
            return extract_catalog(c, d, actors=actors, commit_every_s=1.0, progress=False)

        results.append({**_run(f"ray x{actors}", ray_extract, catalog, folder), "ray_start_s": ray_start["s"]})
    ray.shutdown()
    return results


def extract_table(results: list[dict]) -> FigureTable:
    table = FigureTable("extraction benchmark", [
        Column("models", "models"), Column("failed", "failed"), Column("seconds", "seconds", "{:.1f}".format),
        Column("models/min", "models_per_min", "{:.1f}".format), Column("filters/s", "filters_per_s", "{:,.0f}".format),
        Ratio("vs loop", "models_per_min"), Column("Ray start (s)", "ray_start_s", "{:.1f}".format),
        Column("first model (s)", "first_model_s", "{:.1f}".format),
        Column("steady models/min", "steady_models_per_min", "{:.1f}".format), Ratio("steady vs loop", "steady_models_per_min"),
        Column("driver RSS growth MiB", "driver_growth_mib", "{:.0f}".format),
    ], baseline=results[0]["name"])
    for r in results:
        table.add(r["name"], r)
    return table


def add_arguments(parser) -> None:
    parser.add_argument("--archs", type=int, default=len(BENCH_ARCHS), help="how many timm architectures (random init)")
    parser.add_argument("--demo-catalog", help="also extract these models (e.g. demo_out/catalog.csv)")
    parser.add_argument("--workdir", help="folder for the benchmark DBs (default: a temporary folder)")
    parser.add_argument("--metrics-only", action="store_true", help="only the layer-metrics step, batched vs per layer")


def run(args) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    console = Console(width=200)
    folder = Path(args.workdir or tempfile.mkdtemp(prefix="filterdb-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    metrics = metrics_figures(bench_catalog(folder, BENCH_ARCHS[: args.archs], args.demo_catalog))
    if args.metrics_only:
        metrics.report(args.json, console)
        return 0
    metrics.print(console)
    results = run_extract_benchmark(BENCH_ARCHS[: args.archs], args.demo_catalog, str(folder))
    table = extract_table(results)
    imports = actor_import_seconds()
    table.notes.append(f"a fresh Python process imports torch, timm and the extraction code in {imports:.1f} s: "
                       f"each actor pays it before its first model")
    table.extra["actor_import_s"] = imports
    table.extra["layer_metrics"] = metrics.as_json()
    table.report(args.json, console)
    return 1 if any(r["failed"] for r in results) else 0
