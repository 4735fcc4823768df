"""Benchmark of extraction: the single-process loop against the Ray pipeline with 1 and 2 actors.

Prints models/min and filters/s of each, the ratio to the loop, Ray's fixed cost (start to first
stored model, Ray start included) apart from the per-model rate after it, and the driver's peak
memory. Run: `filterdb bench extract [--demo-catalog demo_out/catalog.csv]`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from flows.peak_memory import PeakMemory
from flows.ray_runtime import ensure_ray
from ops.catalog import read_catalog, write_catalog

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


def _run(name: str, extract, catalog: Path, folder: Path) -> dict:
    db = folder / f"db_{name}"
    shutil.rmtree(db, ignore_errors=True)
    started = time.perf_counter()
    with PeakMemory() as memory:
        summary = extract(str(catalog), str(db))
    seconds = time.perf_counter() - started
    n = len(summary.stored)
    first = summary.first_stored_after or seconds
    steady = (n - 1) / (seconds - first) * 60 if n > 1 and seconds > first else float("nan")
    return {"name": name, "models": n, "failed": len(summary.failed), "seconds": seconds,
            "models_per_min": n / seconds * 60, "filters_per_s": summary.n_filters / seconds,
            "first_model_s": first, "steady_models_per_min": steady, "driver_growth_mib": (memory.peak - memory.baseline) / 2**20}


def run_extract_benchmark(archs: list[str] | None = None, demo_catalog: str | None = None,
                          workdir: str | None = None, actor_counts: tuple[int, ...] = (1, 2)) -> list[dict]:
    import ray

    from flows.extract import extract_catalog, extract_catalog_local

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    folder = Path(workdir or tempfile.mkdtemp(prefix="filterdb-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    catalog = bench_catalog(folder, archs or BENCH_ARCHS, demo_catalog)
    console = Console(width=200)
    console.print(f"catalog: {len(read_catalog(catalog))} models ({catalog})")
    results = [_run("loop", lambda c, d: extract_catalog_local(c, d, progress=False), catalog, folder)]
    for actors in actor_counts:
        ray.shutdown()  # each Ray run pays its own start, reported as the fixed cost

        def ray_extract(c, d, actors=actors):
            ensure_ray(num_cpus=max(2, actors))
            # commit every second, so that "first stored model" is not held back by the 5 s default
            return extract_catalog(c, d, actors=actors, commit_every_s=1.0, progress=False)

        results.append(_run(f"ray x{actors}", ray_extract, catalog, folder))
    ray.shutdown()
    print_results(results, console)
    return results


def print_results(results: list[dict], console: Console) -> None:
    base = results[0]
    table = Table(title="extraction benchmark")
    for column in ("run", "models", "failed", "seconds", "models/min", "filters/s", "vs loop",
                   "first model (s)", "steady models/min", "steady vs loop", "driver RSS growth MiB"):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(r["name"], str(r["models"]), str(r["failed"]), f"{r['seconds']:.1f}",
                      f"{r['models_per_min']:.1f}", f"{r['filters_per_s']:,.0f}",
                      f"{r['models_per_min'] / base['models_per_min']:.2f}x", f"{r['first_model_s']:.1f}",
                      f"{r['steady_models_per_min']:.1f}",
                      f"{r['steady_models_per_min'] / base['steady_models_per_min']:.2f}x",
                      f"{r['driver_growth_mib']:.0f}")
    console.print(table)


if __name__ == "__main__":
    run_extract_benchmark()
