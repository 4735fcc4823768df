"""Benchmark of the layer quality metrics: ops.metrics against torchconvquality 0.3.0.

Both run on the same 3x3 Conv2d layers of randomly initialised timm models (no download) and of a
small CNN. Each timing is the best of `repeats` interleaved runs, so load from other processes
hurts both sides alike. torchconvquality runs on CPU only (its orthogonality builds the identity
on the CPU); ours is also timed on CUDA when there is a GPU.

    filterdb bench quality [--repeats 3] [--arch resnet18,vgg11] [--threads 1] [--cpu-time]

The "orth. share" column times our orthogonality alone (`ops.metrics.orthogonality`, layer by layer) in
the same rounds, as a share of all our metrics: on large layers, the part that is the out x out Gram
matrix of the rows.

    filterdb bench quality --thresholds [--seeds 3] [--draws 2000]

prints instead the measurements behind `ops.metrics.DegeneracyThresholds` (`threshold_evidence`).
"""

from __future__ import annotations

import math
import os
import time
import warnings

import torch

from flows.bench.timing import Column, FigureTable, Ratio, best_of, best_of_each
from ops.metrics import DegeneracyThresholds, classify_layer, orthogonality, quality_of_layers
from ops.store import QUALITY_COLUMNS

HELP = "our layer metrics vs torchconvquality"

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

    filters = sum(w.shape[0] * w.shape[1] for w in weights)
    reference = [torchconvquality.measure_conv_weight_quality(w) for w in weights]
    ours = quality_of_layers(weights)
    row = {"name": name, "layers": len(weights), "filters": filters, "max_abs_diff": _max_abs_diff(ours, reference)}
    assert row["max_abs_diff"] <= TOLERANCE, f"{name}: ours and torchconvquality differ by {row['max_abs_diff']:.2g}"
    timed = best_of_each([lambda: [torchconvquality.measure_conv_weight_quality(w) for w in weights],
                          lambda: quality_of_layers(weights), lambda: [orthogonality(w) for w in weights]],
                         repeats, clock=clock)
    row["seconds_torchconvquality"], row["seconds_ours"], orthogonality_seconds = (t.seconds for t in timed)
    row["orthogonality_share"] = orthogonality_seconds / row["seconds_ours"]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        on_gpu = [w.to(gpu) for w in weights]
        row["max_abs_diff_cuda"] = _max_abs_diff(quality_of_layers(on_gpu), reference)
        assert row["max_abs_diff_cuda"] <= TOLERANCE, f"{name}: CUDA values differ by {row['max_abs_diff_cuda']:.2g}"

        def on_cuda():
            quality_of_layers(on_gpu)
            torch.cuda.synchronize(gpu)

        row["seconds_ours_cuda"] = best_of(on_cuda, repeats).seconds  # always wall time
    return _with_rates(row)


def _with_rates(row: dict) -> dict:
    """The row with filters/s of each side next to its seconds."""
    rates = {f"filters_per_s{key.removeprefix('seconds')}": row["filters"] / row[key] for key in row if key.startswith("seconds_")}
    return {**row, **rates}


def run_quality_benchmark(
    architectures=ARCHITECTURES,
    repeats: int = 3,
    threads: int | None = None,
    cpu_time: bool = False,
    seed: int = 0,
) -> dict:
    """Benchmark every architecture (random init) plus the small CNN; return the figures.

    `threads`: torch CPU threads for the run (default: as set); `cpu_time`: time the CPU runs by
    this process's CPU time instead of wall time (for a busy machine). Returns {"rows": [one dict
    per model], "total": the sums over all models, with the largest max_abs_diff, "setup": torch's
    version, threads, CUDA, the clock and the repeats}."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    models = [(name, timm.create_model(name, pretrained=False)) for name in architectures]
    models.append(("small_cnn", small_cnn()))
    clock = time.process_time if cpu_time else time.perf_counter
    setup = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
             "clock": "process CPU time" if cpu_time else "wall time", "repeats": repeats}
    rows = [benchmark_layers(name, conv3x3_weights(model), repeats, clock) for name, model in models]
    total = {"name": "total", "max_abs_diff": max(r["max_abs_diff"] for r in rows),
             "orthogonality_share": sum(r["orthogonality_share"] * r["seconds_ours"] for r in rows)
             / sum(r["seconds_ours"] for r in rows)}
    for key in ("layers", "filters", "seconds_torchconvquality", "seconds_ours", "seconds_ours_cuda"):
        if key in rows[0]:
            total[key] = sum(r[key] for r in rows)
    if "max_abs_diff_cuda" in rows[0]:
        total["max_abs_diff_cuda"] = max(r["max_abs_diff_cuda"] for r in rows)
    return {"rows": rows, "total": _with_rates(total), "setup": setup}


def quality_table(figures: dict) -> FigureTable:
    """One row per model and the total; "ratio" is ours ÷ torchconvquality in filters/s."""
    setup = figures["setup"]
    columns = [Column("layers", "layers"), Column("filters", "filters"),
               Column("tcq f/s", "filters_per_s_torchconvquality", "{:.3g}".format),
               Column("ours f/s", "filters_per_s_ours", "{:.3g}".format),
               Ratio("ratio", "filters_per_s_ours", to="filters_per_s_torchconvquality", format="{:.1f}".format),
               Column("orth. share", "orthogonality_share", "{:.0%}".format),
               Column("max|diff|", "max_abs_diff", "{:.1e}".format)]
    if setup["cuda"]:
        columns += [Column("cuda f/s", "filters_per_s_ours_cuda", "{:.3g}".format),
                    Column("max|diff| cuda", "max_abs_diff_cuda", "{:.1e}".format)]
    table = FigureTable(f"torch {setup['torch']}, {setup['threads']} CPU threads, CUDA: {setup['cuda']}, "
                        f"CPU runs timed by {setup['clock']}, best of {setup['repeats']}",
                        columns, name_header="model", extra={"setup": setup})
    for row in [*figures["rows"], figures["total"]]:
        table.add(row["name"], row)
    return table


# --- the measurements behind DegeneracyThresholds ---------------------------------------------

THRESHOLD_ARCHITECTURES = ARCHITECTURES + ("resnet34", "mixnet_s", "tinynet_a")
"""Randomly initialised timm architectures whose 3x3 layers must all read random-looking."""

DRAW_SHAPES = ((5, 2), (8, 4), (8, 8), (16, 16), (32, 32), (64, 64))
"""(out, in) of the random draws: n = 10, 32, 64, 256, 1024, 4096 filters."""


def digits_cnn_layers(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The 3x3 weights of a small CNN at initialisation and after about 2 s of Adam on sklearn's digits."""
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    digits = load_digits()
    x, y = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16, torch.tensor(digits.target)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10))
    initial = [w.clone() for w in conv3x3_weights(model)]
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(4):
        for batch in torch.randperm(len(x)).split(64):
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return initial, conv3x3_weights(model)


def _evidence_row(name: str, qualities: list[dict]) -> dict:
    """min / median / max of normalised VE, the largest sparsity and the labels the defaults give."""
    entropies = sorted(q["variance_entropy_norm"] for q in qualities if not math.isnan(q["variance_entropy_norm"]))
    labels = [classify_layer(q, DegeneracyThresholds()) for q in qualities]
    return {"name": name, "layers": len(qualities), "ve_norm_min": entropies[0],
            "ve_norm_median": entropies[len(entropies) // 2], "ve_norm_max": entropies[-1],
            "sparsity_max": max(q["sparsity"] for q in qualities),
            **{f"share_{label}": sum(label in ls for ls in labels) / len(labels)
               for label in ("sparse", "low_diversity", "random_looking")}}


def threshold_evidence(seeds: int = 3, draws: int = 2000) -> FigureTable:
    """The measurements the defaults of DegeneracyThresholds rest on, one row per set of layers:
    random-init timm layers, Gaussian and uniform draws of each size, a small CNN before and after
    training on digits (its deeper layers; the first has 16 filters), one pattern with random gains
    plus noise. Each row shows where its normalised VE and sparsity lie and which share of its layers
    each default label takes."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import timm

    rows = []
    timm_layers = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        for name in THRESHOLD_ARCHITECTURES:
            timm_layers += quality_of_layers(conv3x3_weights(timm.create_model(name, pretrained=False)))
    rows.append(_evidence_row(f"random init: {len(THRESHOLD_ARCHITECTURES)} timm architectures x {seeds} seeds", timm_layers))
    generator = torch.Generator().manual_seed(0)
    peaks_4096 = []
    for out, inp in DRAW_SHAPES:
        for law, draw in (("Gaussian", torch.randn), ("uniform", lambda *shape, generator: torch.rand(*shape, generator=generator) - 0.5)):
            qualities = []
            for start in range(0, draws, 250):
                batch = draw(min(250, draws - start), out, inp, 3, 3, generator=generator)
                qualities += quality_of_layers(list(batch))
                if law == "Gaussian" and out * inp == 4096:
                    peaks_4096 += (batch.flatten(1).abs().amax(1) / batch.flatten(1).std(1)).tolist()
            rows.append(_evidence_row(f"{draws} {law} draws, n = {out * inp}", qualities))
    trained, initial = [], []
    for seed in range(seeds):
        before, after = digits_cnn_layers(seed)
        initial += quality_of_layers(before[1:])
        trained += quality_of_layers(after[1:])
    rows.append(_evidence_row(f"digits CNN, layers 2-3 at init, {seeds} seeds", initial))
    rows.append(_evidence_row(f"digits CNN, layers 2-3 after about 2 s of training, {seeds} seeds", trained))
    pattern = torch.randn(9, generator=generator)
    for noise in (0.1, 0.5, 1.0):
        gains = torch.randn(64, 64, 1, generator=generator)
        W = (gains * pattern + noise * torch.randn(64, 64, 9, generator=generator)).view(64, 64, 3, 3)
        rows.append(_evidence_row(f"one pattern x random gains + {noise:.0%} noise, n = 4096", quality_of_layers([W])))
    # odds that a Gaussian filter is sparse: all nine |w| < 1% of the layer's peak (peak in units of sigma)
    odds = sum(math.erf(0.01 * peak / math.sqrt(2)) ** 9 for peak in peaks_4096) / len(peaks_4096)
    defaults = DegeneracyThresholds()
    table = FigureTable(f"degeneracy thresholds (defaults: sparse > {defaults.sparse}, low_diversity < "
                        f"{defaults.low_diversity}, random_looking > {defaults.random_looking} on normalised VE)",
                        [Column("layers", "layers"), Column("VE norm min", "ve_norm_min", "{:.3f}".format),
                         Column("median", "ve_norm_median", "{:.3f}".format), Column("max", "ve_norm_max", "{:.3f}".format),
                         Column("sparsity max", "sparsity_max", "{:.3f}".format),
                         Column("sparse", "share_sparse", "{:.0%}".format),
                         Column("low diversity", "share_low_diversity", "{:.0%}".format),
                         Column("random-looking", "share_random_looking", "{:.0%}".format)],
                        name_header="layers measured",
                        notes=[f"odds that a Gaussian filter of a layer of 4096 is sparse (all nine |w| < 1% of the "
                               f"layer's peak, P(|z| < 0.01 peak)^9 averaged over the drawn layers' peaks): {odds:.1e}"],
                        extra={"sparse_filter_odds_gaussian_4096": odds})
    for row in rows:
        table.add(row["name"], row)
    return table


def add_arguments(parser) -> None:
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side; the best counts")
    parser.add_argument("--arch", default=",".join(ARCHITECTURES), help="comma-separated timm model names")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--cpu-time", action="store_true", help="time CPU runs by process CPU time (busy machine)")
    parser.add_argument("--thresholds", action="store_true",
                        help="print the measurements behind DegeneracyThresholds instead of timing")
    parser.add_argument("--seeds", type=int, default=3, help="with --thresholds: seeds of the timm models and the digits CNN")
    parser.add_argument("--draws", type=int, default=2000, help="with --thresholds: random layers drawn per size and law")


def run(args) -> int:
    if args.thresholds:
        from rich.console import Console

        threshold_evidence(args.seeds, args.draws).report(args.json, Console(width=200))
        return 0
    architectures = tuple(a for a in args.arch.split(",") if a)
    figures = run_quality_benchmark(architectures, repeats=args.repeats, threads=args.threads, cpu_time=args.cpu_time)
    quality_table(figures).report(args.json)
    return 0
