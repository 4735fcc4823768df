"""Benchmark of the layer quality metrics: ops.metrics against torchconvquality 0.3.0.

Both run on the same 3x3 Conv2d layers of randomly initialised timm models (no download) and of a
small CNN. Each timing is the best of `repeats` interleaved runs, so load from other processes
hurts both sides alike. torchconvquality runs on CPU only (its orthogonality builds the identity
on the CPU); ours is also timed on CUDA when there is a GPU.

    python -m flows.bench_quality [--repeats 3] [--arch resnet18,vgg11] [--threads 1] [--cpu-time]
"""

import argparse
import math
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from ops.metrics import quality_of_layers
from ops.store import QUALITY_COLUMNS

TOLERANCE = 1e-5
"""Largest allowed |ours - torchconvquality| on these (ordinary) layers."""

ARCHITECTURES = (
    "resnet18",
    "resnet50",
    "vgg11",
    "densenet121",
    "repvgg_a0",
    "dla34",
    "regnetx_002",
    "mobilenetv2_050",
    "mobilenetv3_small_100",
    "efficientnet_b0",
    "ghostnet_100",
    "lcnet_050",
)


def small_cnn() -> torch.nn.Module:
    """A digits-sized CNN (8x8 grey images), the kind the tests train."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1),
    )


def conv3x3_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    """Weights of every 2-D convolution with a 3x3 kernel (subclasses included), in module order."""
    return [
        m.weight.detach()
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (3, 3)
    ]


def _seconds(run, device: torch.device, clock=time.perf_counter) -> float:
    start = clock()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return clock() - start


def _max_abs_diff(ours: list[dict], reference: list[dict]) -> float:
    """Largest |ours - reference| over all metrics; pairs where both are NaN are equal."""
    diffs = [
        0.0 if math.isnan(a[k]) and math.isnan(b[k]) else abs(a[k] - b[k])
        for a, b in zip(ours, reference)
        for k in QUALITY_COLUMNS
    ]
    return max(diffs, default=0.0)


def benchmark_layers(name: str, weights: list[torch.Tensor], repeats: int, clock=time.perf_counter) -> dict:
    """Filters/s of both implementations on one set of layers, and their largest disagreement.

    `clock` times the CPU runs: wall time by default; time.process_time counts only this process's
    CPU time, which other processes' load does not inflate (the CUDA run is always wall time)."""
    with warnings.catch_warnings():  # it imports distutils
        warnings.simplefilter("ignore", DeprecationWarning)
        import torchconvquality

    cpu = torch.device("cpu")
    filters = sum(w.shape[0] * w.shape[1] for w in weights)
    reference = [torchconvquality.measure_conv_weight_quality(w) for w in weights]
    ours = quality_of_layers(weights)
    row = {
        "name": name,
        "layers": len(weights),
        "filters": filters,
        "seconds_torchconvquality": math.inf,
        "seconds_ours": math.inf,
        "max_abs_diff": _max_abs_diff(ours, reference),
    }
    assert row["max_abs_diff"] <= TOLERANCE, f"{name}: ours and torchconvquality differ by {row['max_abs_diff']:.2g}"
    for _ in range(repeats):  # interleaved, so that load from elsewhere hits both sides alike
        seconds = _seconds(lambda: [torchconvquality.measure_conv_weight_quality(w) for w in weights], cpu, clock)
        row["seconds_torchconvquality"] = min(row["seconds_torchconvquality"], seconds)
        row["seconds_ours"] = min(row["seconds_ours"], _seconds(lambda: quality_of_layers(weights), cpu, clock))
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        on_gpu = [w.to(gpu) for w in weights]
        row["max_abs_diff_cuda"] = _max_abs_diff(quality_of_layers(on_gpu), reference)
        assert row["max_abs_diff_cuda"] <= TOLERANCE, f"{name}: CUDA values differ by {row['max_abs_diff_cuda']:.2g}"
        row["seconds_ours_cuda"] = min(_seconds(lambda: quality_of_layers(on_gpu), gpu) for _ in range(repeats))
    return row


def run_quality_benchmark(
    architectures=ARCHITECTURES,
    repeats: int = 3,
    threads: int | None = None,
    cpu_time: bool = False,
    seed: int = 0,
    show=print,
) -> dict:
    """Benchmark every architecture (random init) plus the small CNN; print a table, return the figures.

    `threads`: torch CPU threads for the run (default: as set); `cpu_time`: time the CPU runs by
    this process's CPU time instead of wall time (for a busy machine). Returns {"rows": [one dict
    per model], "total": the sums over all models, with the largest max_abs_diff}."""
    import timm

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    models = [(name, timm.create_model(name, pretrained=False)) for name in architectures]
    models.append(("small_cnn", small_cnn()))
    clock = time.process_time if cpu_time else time.perf_counter
    show(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}, "
        f"CPU runs timed by {'process CPU time' if cpu_time else 'wall time'}, best of {repeats}"
    )
    header = f"{'model':<24}{'layers':>7}{'filters':>10}{'tcq f/s':>12}{'ours f/s':>12}{'ratio':>7}{'max|diff|':>11}"
    if torch.cuda.is_available():
        header += f"{'cuda f/s':>12}{'max|diff|':>11}"
    show(header)
    rows = []
    for name, model in models:
        row = benchmark_layers(name, conv3x3_weights(model), repeats, clock)
        rows.append(row)
        show(_format(row))
    total = {"name": "total", "max_abs_diff": max(r["max_abs_diff"] for r in rows)}
    for key in ("layers", "filters", "seconds_torchconvquality", "seconds_ours", "seconds_ours_cuda"):
        if key in rows[0]:
            total[key] = sum(r[key] for r in rows)
    if "max_abs_diff_cuda" in rows[0]:
        total["max_abs_diff_cuda"] = max(r["max_abs_diff_cuda"] for r in rows)
    show(_format(total))
    return {"rows": rows, "total": total}


def _format(row: dict) -> str:
    tcq = row["filters"] / row["seconds_torchconvquality"]
    ours = row["filters"] / row["seconds_ours"]
    line = f"{row['name']:<24}{row['layers']:>7}{row['filters']:>10}{tcq:>12.3g}{ours:>12.3g}{ours / tcq:>7.1f}"
    line += f"{row['max_abs_diff']:>11.1e}"
    if "seconds_ours_cuda" in row:
        line += f"{row['filters'] / row['seconds_ours_cuda']:>12.3g}{row['max_abs_diff_cuda']:>11.1e}"
    return line


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts")
    parser.add_argument("--arch", default=",".join(ARCHITECTURES), help="comma-separated timm model names")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU runs by process CPU time (busy machine)")
    args = parser.parse_args(argv)
    architectures = tuple(a for a in args.arch.split(",") if a)
    run_quality_benchmark(architectures, repeats=args.repeats, threads=args.threads, cpu_time=args.cpu_time)


if __name__ == "__main__":
    main()
