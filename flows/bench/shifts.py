"""Benchmark of the shift analysis: `filterdb bench shifts --filters 10M`.

In one run, on one synthetic DB (generated once under the cache folder, then reused):
- scan: the rate at which this machine merely reads the `weights` column from Lance (the practical
  limit of any pass over the data), in this process as Lance runs by default, and in a new process
  whose malloc keeps freed memory as the flow's holders do (`scan_rate_keeping_freed_memory`);
- flow: `run_shifts` on Ray with 1 and 2 workers, with the filters read once and kept by the holders
  between the steps, and read once per step (Ray started beforehand; its start and the
  first run, which starts the workers, are reported apart; the seconds of each step are printed), and
  with the basis stored for the selection (one pass);
- in-memory: the same aggregates (`ops.shifts.analyse`) on a numpy array already in memory;
- study: the study's single-process recipe: load everything, scikit-learn PCA, one range over all
  coefficients, per-group `numpy.histogram(density=True)` floored at float32 epsilon,
  `scipy.stats.entropy` (skipped above `--study-max`, where it would not fit);
- peak memory of the flow (driver plus Ray's processes) at this size.
Every contender runs `--repeats` times, best kept. `--json FILE` writes the figures, with the
headline ones at the top level: `filters`, `flow_filters_per_s` (the default flow),
`study_filters_per_s`, `scan_filters_per_s`, `scan_kept_memory_filters_per_s`, `peak_rss_bytes` (the
default flow's).
"""

from __future__ import annotations

import os
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.bench.timing import Column, FigureTable, PeakMemory, Ratio, best_of
from flows.ray_runtime import ensure_ray
from ops.store import FILTERS_SCHEMA, LAYERS_SCHEMA, META_COLUMNS, MODELS_SCHEMA, model_key

HELP = "shift flow vs numpy, the study's recipe, the Lance scan"

DEFAULT_CACHE = Path(os.environ.get("FILTERDB_BENCH_CACHE", Path.home() / ".cache" / "filterdb" / "bench"))
FRAGMENT_ROWS = 1 << 18
FILTERS_PER_MODEL = 50_000

META_VALUES = {
    "family": ["resnet", "vgg", "mobilenet", "densenet", "efficientnet", "unet"],
    "task": ["classification", "segmentation", "detection", "gan"],
    "train_dataset": ["imagenet", "cifar10", "coco", "chestxray", "eurosat", "celeba", "mnist"],
    "pretrain_dataset": ["none", "imagenet", "jft"],
    "visual_category": ["natural", "medical", "satellite", "faces", "handwriting"],
}


# --- synthetic DB ----------------------------------------------------------------------------------

_GRID = np.mgrid[-1:2, -1:2].reshape(2, 9).astype(np.float64)
PROTOTYPES = np.stack(
    [
        np.exp(-(_GRID**2).sum(0)),  # centre blob
        _GRID[1],  # horizontal gradient
        _GRID[0],  # vertical gradient
        _GRID[0] + _GRID[1],  # diagonal gradient
        np.where((_GRID**2).sum(0) == 0, 8.0, -1.0),  # centre-surround
        _GRID[1] ** 2 - 2 / 3,  # second derivative x
        _GRID[0] ** 2 - 2 / 3,  # second derivative y
        _GRID[0] * _GRID[1],  # saddle
        np.ones(9),  # mean
    ]
)


def synthetic_filters(rng: np.random.Generator, n: int, style: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(n, 9) float32: structured kernels (a mixture of the prototypes whose mix depends on the
    model's `style` and on depth) plus noise, a share of sparse and all-zero filters."""
    scales = np.array([1.0, 0.9, 0.7, 0.5, 0.4, 0.33, 0.27, 0.2, 0.6])  # distinct: no two equal variances
    mix = rng.standard_normal((n, 9)) * scales * (1 + style[:, None] * np.linspace(-0.5, 0.5, 9))
    mix[:, 0] += 0.6 * (1 - depth) + 0.3 * style  # blobs in early layers, more so for some styles
    w = mix @ PROTOTYPES + rng.standard_normal((n, 9)) * (0.15 + 0.25 * depth[:, None])
    w *= rng.lognormal(-2.5, 0.5, (n, 1))
    sparse = rng.random(n) < 0.05 + 0.1 * depth
    w[sparse] *= 1e-3
    w[rng.random(n) < 0.002] = 0
    return w.astype(np.float32)


def _table(rng: np.random.Generator, first_model: int, n_models: int, n_rows: int) -> pa.Table:
    model = np.minimum(np.arange(n_rows) * n_models // n_rows, n_models - 1) + first_model
    layers = 12
    position = np.arange(n_rows) - np.searchsorted(model, model)  # row number within its model
    per_model = np.bincount(model - first_model, minlength=n_models)[model - first_model]
    layer = np.minimum(position * layers // np.maximum(per_model, 1), layers - 1).astype(np.int32)
    style = np.array([np.random.default_rng(m).uniform(-1, 1) for m in range(first_model, first_model + n_models)])[model - first_model]
    depth_norm = layer / (layers - 1)
    weights = synthetic_filters(rng, n_rows, style, depth_norm)
    columns = {
        "model_id": pc.take(pa.array([f"model_{m:05d}" for m in range(first_model, first_model + n_models)]), pa.array(model - first_model)),
        "model_key": pc.take(pa.array([model_key(f"model_{m:05d}") for m in range(first_model, first_model + n_models)], pa.int64()), pa.array(model - first_model)),
        "layer_index": pa.array(layer),
        "out_index": pa.array((position % 4096 // 64).astype(np.int32)),
        "in_index": pa.array((position % 64).astype(np.int32)),
        "conv_depth": pa.array(layer),
        "conv_depth_norm": pa.array(depth_norm.astype(np.float64)),
        "kind": pc.take(pa.array(["conv", "depthwise", "grouped"]), pa.array((layer % 5 == 4).astype(np.int64) + (layer % 7 == 6))),
        "weights": pa.FixedSizeListArray.from_arrays(pa.array(weights.reshape(-1)), 9),
    }
    for name in META_COLUMNS:
        values = META_VALUES[name]
        codes = np.array([np.random.default_rng([m, len(name)]).integers(len(values)) for m in range(first_model, first_model + n_models)])
        columns[name] = pc.take(pa.array(values), pa.array(codes[model - first_model]))
    return pa.table(columns, schema=FILTERS_SCHEMA)


def synthetic_db(n_filters: int, cache: Path = DEFAULT_CACHE, seed: int = 0) -> Path:
    """A DB folder with a synthetic filters.lance of n_filters rows (models of ~50k filters, 12 layers,
    meta columns per model) and the matching layers.lance; generated once, then reused."""
    db = Path(cache) / f"shifts_{n_filters}"
    uri, layers_uri, models_uri = db / "filters.lance", db / "layers.lance", db / "models.lance"
    if layers_uri.exists() and uri.exists() and lance.dataset(str(uri)).count_rows() == n_filters:
        if not models_uri.exists():  # a DB generated before readers checked the models rows
            lance.write_dataset(_models_table(lance.dataset(str(layers_uri)).to_table()), str(models_uri))
        from ops.db import open_db

        if open_db(db).missing_columns():  # generated before filterdb 0.2: brought up to date as users would
            open_db(db).upgrade()
        return db
    db.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_models = max(1, n_filters // FILTERS_PER_MODEL)
    mode, layers = "overwrite", {}
    for start in range(0, n_filters, FRAGMENT_ROWS):
        rows = min(FRAGMENT_ROWS, n_filters - start)
        first, last = start * n_models // n_filters, min(n_models - 1, (start + rows - 1) * n_models // n_filters)
        table = _table(rng, first, last - first + 1, rows)
        lance.write_dataset(table, str(uri), mode=mode, max_rows_per_file=FRAGMENT_ROWS)
        mode = "append"
        keys = table.group_by(["model_id", "layer_index", "kind", "conv_depth", "conv_depth_norm"]).aggregate([("out_index", "count")])
        for row in keys.to_pylist():
            key = (row["model_id"], row["layer_index"])
            previous = layers.get(key, {"n_filters": 0})
            layers[key] = {**row, "n_filters": previous["n_filters"] + row["out_index_count"]}
    layers_table = _layers_table(list(layers.values()))
    lance.write_dataset(layers_table, str(layers_uri), mode="overwrite")
    lance.write_dataset(_models_table(layers_table), str(models_uri), mode="overwrite")
    return db


def _models_table(layers: pa.Table) -> pa.Table:
    """One `ok` models row per model of the layers table, with its filter and layer counts (what
    readers check the stored rows against) and the meta values its filters carry."""
    per_model = layers.group_by("model_id").aggregate([("n_filters", "sum"), ("layer_index", "count")]).sort_by("model_id")
    ids = per_model.column("model_id").to_pylist()
    columns = {"model_id": ids, "source": ["synthetic"] * len(ids), "status": ["ok"] * len(ids),
               "n_filters_3x3": per_model.column("n_filters_sum").to_pylist(), "n_conv_layers": per_model.column("layer_index_count").to_pylist()}
    for name in META_COLUMNS:
        values = META_VALUES[name]
        columns[name] = [values[np.random.default_rng([int(m.split("_")[1]), len(name)]).integers(len(values))] for m in ids]
    return pa.table({f.name: pa.array(columns.get(f.name, [None] * len(ids)), f.type) for f in MODELS_SCHEMA}, schema=MODELS_SCHEMA)


def _layers_table(rows: list[dict]) -> pa.Table:
    n = len(rows)
    columns = {
        "model_id": [r["model_id"] for r in rows],
        "layer_index": [r["layer_index"] for r in rows],
        "layer_name": [f"layer{r['layer_index']}" for r in rows],
        "kind": [r["kind"] for r in rows],
        "kernel_h": [3] * n,
        "kernel_w": [3] * n,
        "conv_depth": [r["conv_depth"] for r in rows],
        "conv_depth_norm": [r["conv_depth_norm"] for r in rows],
        "depth_method": ["synthetic"] * n,
        "n_filters": [r["n_filters"] for r in rows],
    }
    columns.update({name: [1] * n for name in ("in_channels", "out_channels", "groups")})
    return pa.table({f.name: pa.array(columns.get(f.name, [None] * n), f.type) for f in LAYERS_SCHEMA}, schema=LAYERS_SCHEMA)


# --- the contenders --------------------------------------------------------------------------------


def scan_rate(uri: str, repeats: int = 3, batch_rows: int = 1 << 17) -> float:
    """Filters/s of merely reading the weights column with Lance's scanner (best of `repeats`, after
    one untimed scan: the first contender would otherwise pay for reading the files into the page
    cache, which every later one finds there)."""
    dataset = lance.dataset(uri)

    def scan():
        return sum(b.num_rows for b in dataset.scanner(columns=["weights"], batch_size=batch_rows).to_batches())

    scan()
    timing = best_of(scan, repeats)
    return timing.result / timing.seconds


def scan_rate_keeping_freed_memory(uri: str, repeats: int = 3) -> float:
    """`scan_rate` in a new process with the malloc settings of the flow's holders
    (`flows.shifts.HOLDER_MALLOC`): the scan without the page faults the flow no longer pays."""
    import subprocess
    import sys

    from flows.shifts import HOLDER_MALLOC

    program = f"from flows.bench.shifts import scan_rate; print(scan_rate({uri!r}, {repeats}))"
    done = subprocess.run([sys.executable, "-c", program], env={**os.environ, **HOLDER_MALLOC}, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def study_recipe(uri: str, axes: list[str], bins: int = 70) -> dict[str, np.ndarray]:
    """The study's single-process recipe (design.md, "Distribution shift"): load every filter, divide
    each by its own max |w| (float32, as stored), scikit-learn PCA (in float32, the study's dtype), ONE
    (min, max) over all coefficients of all components, `np.histogram(range=, bins=, density=True)`
    per group and component, float64, zero bins set to float32 epsilon, renormalised, scipy's entropy
    both ways, weighted by `explained_variance_ratio_`. The weighted matrix of every axis, groups by name."""
    from scipy.stats import entropy
    from sklearn.decomposition import PCA

    table = lance.dataset(uri).to_table(columns=["weights", *axes])
    weights = table.column("weights").combine_chunks().flatten().to_numpy().reshape(-1, 9)
    peak = np.abs(weights).max(axis=1)
    peak[peak == 0] = 1
    scaled = weights / peak[:, None]
    pca = PCA(n_components=9).fit(scaled)
    coefficients = pca.transform(scaled)
    value_range = (coefficients.min(), coefficients.max())
    eps = np.finfo(np.float32).eps
    matrices = {}
    for axis in axes:
        groups = table.column(axis).to_numpy(zero_copy_only=False)
        names = sorted(set(groups))
        p = {}
        for g in names:
            members = coefficients[groups == g]
            for k in range(9):
                density, _ = np.histogram(members[:, k], bins=bins, range=value_range, density=True)
                density = density.astype(np.float64)
                density[density == 0] = eps
                p[g, k] = density / density.sum()
        weighted = np.zeros((len(names), len(names)))
        for a, ga in enumerate(names):
            for b, gb in enumerate(names):
                weighted[a, b] = sum(pca.explained_variance_ratio_[k] * (entropy(p[ga, k], p[gb, k]) + entropy(p[gb, k], p[ga, k])) for k in range(9))
        matrices[axis] = weighted
    return matrices


def in_memory_rate(uri: str, axis: str, repeats: int = 2) -> float:
    """Filters/s of the same aggregates (`ops.shifts.analyse`) on the weights and groups of `axis`
    already in memory (best of `repeats`)."""
    from ops.shifts import analyse, group_codes, weights_array

    table = lance.dataset(uri).to_table(columns=["weights", axis])
    weights = weights_array(table.column("weights"))
    codes, labels = group_codes(table.column(axis))
    return len(weights) / best_of(lambda: analyse(weights, codes, labels, axis=axis), repeats).seconds


def run_shifts_benchmark(
    n_filters: int,
    by: str = "task",
    cache: Path = DEFAULT_CACHE,
    workers: tuple[int | None, ...] = (None, 1, 2),
    study_max: int = 20_000_000,
    repeats: int = 2,
    address: str | None = None,
) -> dict:
    """All figures of the benchmark in one dict (rates in filters/s, times in s, memory in bytes).
    `by`: one axis or several separated by commas (the flow does them in one pass, the study's recipe
    one after the other on the same PCA). Every contender runs `repeats` times, best kept."""
    import ray

    from flows.shifts import CACHE_SHARE, kept_bytes, keeps_filters, run_shift_axes
    from ops.shifts import axis_names

    axes = axis_names(by)
    db = synthetic_db(n_filters, cache)
    uri = str(db / "filters.lance")
    figures = {"filters": n_filters, "by": ",".join(axes), "repeats": repeats, "cpus": os.cpu_count(), "load_average_before": os.getloadavg()[0]}
    figures["scan"] = scan_rate(uri, repeats)
    figures["scan_kept_memory"] = scan_rate_keeping_freed_memory(uri, repeats)

    def flow_run(**options):
        return run_shift_axes(db, axes, write=False, progress=False, **options)

    figures["ray_start_s"] = best_of(lambda: ensure_ray(address)).seconds
    figures["object_store_bytes"] = ray.cluster_resources().get("object_store_memory", 0)
    figures["cache_share"] = CACHE_SHARE
    figures["kept_bytes"] = kept_bytes(n_filters, len(axes))
    figures["cache_fits"] = keeps_filters(n_filters, len(axes))  # the flow's own default
    figures["first_run_s"] = best_of(lambda: flow_run(reuse=False)).seconds
    flow_run(reuse=False, cache=not figures["cache_fits"])  # the other way of reading starts its own machinery in the workers (Ray Data's)
    flow_run(reuse=False)  # and the default once more, untimed (see the order below)
    workers = (None, *[w for w in workers if w is not None])  # the default flow is every ratio's baseline
    default_flow = None
    # The default way of reading first: a run right after the other way was slower (0.57 s after a run
    # reading once per step, 0.43-0.44 s after one keeping the blocks, 10M filters, one series of runs).
    for cache in (figures["cache_fits"], not figures["cache_fits"]):
        for w in workers:
            key = f"flow_{'cached' if cache else 'streamed'}_{w or 'all'}"
            with PeakMemory(children=True) as memory:
                flow = best_of(lambda t: flow_run(reuse=False, concurrency=w, cache=cache, timings=t), repeats, steps=True)
            figures[key], figures[f"{key}_peak_rss"], figures[f"{key}_steps"] = n_filters / flow.seconds, memory.peak, flow.steps
            if w is None and cache == figures["cache_fits"]:
                default_flow = flow.result
    with PeakMemory(children=True, private=True) as memory:  # one more default run, untimed: reading private memory costs CPU
        flow_run(reuse=False)
    figures["flow_driver_peak_rss"], figures["flow_largest_worker_private"] = memory.driver_peak, memory.largest_child_private
    run_shift_axes(db, axes, progress=False, reuse=False)  # stores the basis of this selection and version
    figures["flow_stored_basis"] = n_filters / best_of(lambda: flow_run(), repeats).seconds
    figures["flow"] = figures[f"flow_{'cached' if figures['cache_fits'] else 'streamed'}_all"]  # the default

    figures["in_memory"] = in_memory_rate(uri, axes[0], repeats)  # its arrays freed before the study's run

    if n_filters <= study_max:
        with PeakMemory(children=True) as memory:
            study = best_of(lambda: study_recipe(uri, axes), repeats)
        figures["study"] = n_filters / study.seconds
        figures["study_peak_rss_growth"] = memory.peak - memory.baseline
        figures["study_max_relative_difference"] = max(
            float(np.abs(study.result[axis] - default_flow[axis].sorted("name").kl_weighted).max() / np.abs(study.result[axis]).max()) for axis in axes)
    figures["load_average_after"] = os.getloadavg()[0]
    return figures


def step_costs(n_filters: int, by: str = "task", cache: Path = DEFAULT_CACHE, repeats: int = 2) -> FigureTable:
    """CPU nanoseconds per filter of every piece of the flow's work, in this process (all threads'
    CPU time, `time.process_time`; best of `repeats`), on the synthetic DB of `n_filters`: what one
    filter costs wherever it runs, without Ray."""
    import time

    from ops.shifts import (AxesHistograms, CoefficientRange, Moments, ScaledBlock, axis_names, group_codes, resolve_axis,
                            scaled_block_and_moments, weights_array)

    name = axis_names(by)[0]
    db = synthetic_db(n_filters, cache)
    dataset = lance.dataset(str(db / "filters.lance"))
    axis = resolve_axis(db, name)

    def cpu_ns(fn) -> tuple[float, object]:
        timing = best_of(fn, repeats, clock=time.process_time)
        return timing.seconds / n_filters * 1e9, timing.result

    def decoded(column):
        return cpu_ns(lambda: dataset.scanner(columns=[column], batch_size=1 << 17).to_table())

    costs = {}
    costs["Lance: decode `weights`"], table = decoded("weights")
    if axis.column != name and name in dataset.schema.names:  # what a DB without model_key costs
        costs[f"Lance: decode `{name}` (strings: a DB without model_key)"], strings = decoded(name)
        costs[f"group codes of the `{name}` strings"], _ = cpu_ns(lambda: group_codes(strings.column(name)))
    costs[f"Lance: decode `{axis.column}` (what the flow reads for {name})"], labels_table = decoded(axis.column)
    costs["group codes of the axis"], (codes, labels) = cpu_ns(lambda: axis.codes(labels_table))
    weights = weights_array(table.column("weights"))
    ScaledBlock.of(weights[:10], [(codes[:10], labels)])  # the kernels compiled or loaded from numba's cache, not timed
    costs["step 1: peak scaling (ScaledBlock.of)"], block = cpu_ns(lambda: ScaledBlock.of(weights, [(codes, labels)]))
    costs["steps 1+2, read path: scaling and moments (scaled_block_and_moments)"], (_, moments) = cpu_ns(lambda: scaled_block_and_moments(weights, [(codes, labels)]))
    costs["step 2: moments of a kept block"], moments = cpu_ns(lambda: Moments.of_block(block))
    basis = moments.basis()
    costs["step 3: range of a kept block"], value_range = cpu_ns(lambda: CoefficientRange.of_block(block, basis))
    costs["step 4: histograms of a kept block"], _ = cpu_ns(lambda: AxesHistograms.of_block(block, basis, value_range))
    table = FigureTable(f"CPU ns per filter, {n_filters:,} filters, axis {name}, best of {repeats} (time.process_time, one process)",
                        [Column("ns / filter", "ns", "{:.1f}".format)], name_header="what")
    for what, ns in costs.items():
        table.add(what, {"ns": ns})
    table.notes.append(f"load average {os.getloadavg()[0]:.1f} after")
    return table


def shifts_table(figures: dict) -> FigureTable:
    """The rates of all contenders against the default flow's, then the fixed costs, steps and memory."""
    n, mib = figures["filters"], 1 << 20
    default = f"flow_{'cached' if figures['cache_fits'] else 'streamed'}_all"
    rows = {"scan": "scan of the weights column (Lance, the practical limit)",
            "scan_kept_memory": "the same scan, freed memory kept (malloc as the flow's holders run)"}
    for key in (k for k in figures if k.count("_") == 2 and k.split("_")[1] in ("cached", "streamed")):
        _, mode, w = key.split("_")
        what = "read once, kept by the holders" if mode == "cached" else "read once per step"
        rows[key] = f"flow on Ray, {'all CPUs (default)' if w == 'all' else w + ' worker(s)'}, {what}"
    rows["flow_stored_basis"] = "flow on Ray, basis stored for this selection+version (1 pass)"
    rows["in_memory"] = "same aggregates on an in-memory numpy array (1 process)"
    rows["study"] = "study's recipe (load all, scikit-learn PCA, one range, np.histogram density)"
    summary = {
        "filters": n,
        "flow_filters_per_s": figures["flow"],
        "study_filters_per_s": figures.get("study"),
        "scan_filters_per_s": figures["scan"],
        "scan_kept_memory_filters_per_s": figures.get("scan_kept_memory"),
        "peak_rss_bytes": figures[f"{default}_peak_rss"],
        "driver_peak_rss_bytes": figures["flow_driver_peak_rss"],
        "largest_worker_private_bytes": figures["flow_largest_worker_private"],
    }
    table = FigureTable(f"filterdb shifts --by {figures['by']}: {n:,} filters, {figures['cpus']} CPUs, best of {figures['repeats']} "
                        f"(load average {figures['load_average_before']:.1f} before, {figures['load_average_after']:.1f} after)",
                        [Column("filters/s", "filters_per_s", lambda rate: f"{rate / 1e6:,.2f} M"), Ratio("default flow ÷ this", "filters_per_s", inverted=True)],
                        baseline=rows[default], name_header="what", extra={**summary, "figures": figures})
    for key, what in rows.items():
        if key in figures:
            table.add(what, {"filters_per_s": figures[key]})
    fits = "fit" if figures["cache_fits"] else "do not fit"
    table.notes.append(f"Ray start {figures['ray_start_s']:.1f} s; first run (workers starting) {figures['first_run_s']:.1f} s; "
                       f"the scaled filters ({figures['kept_bytes'] / mib:,.0f} MiB) {fits} in {figures['cache_share']:.0%} of the object store ({figures['object_store_bytes'] / mib:,.0f} MiB): "
                       f"by default the flow {'keeps them' if figures['cache_fits'] else 'reads once per step'}")
    for key in sorted(k for k in figures if k.endswith("_steps")):
        steps = ", ".join(f"{step} {seconds:.2f} s" for step, seconds in figures[key].items())
        table.notes.append(f"{key.removesuffix('_steps').replace('_', ' ')}, best run: {steps}; peak RSS of driver + Ray processes {figures[key.replace('_steps', '_peak_rss')] / mib:,.0f} MiB")
    table.notes.append(f"default flow, one more run: driver peak RSS {figures['flow_driver_peak_rss'] / mib:,.0f} MiB; largest private memory (USS) "
                       f"of one Ray process {figures['flow_largest_worker_private'] / mib:,.0f} MiB")
    if "study" in figures:
        table.notes.append(f"study's recipe: +{figures['study_peak_rss_growth'] / mib:,.0f} MiB resident; weighted KL differs from the default flow's by "
                           f"{figures['study_max_relative_difference']:.1e} (largest difference over the largest value, float32 PCA)")
    return table


def parse_count(text: str) -> int:
    """'10M' -> 10_000_000, '500k' -> 500_000, '1e6' -> 1_000_000."""
    text = text.strip().lower().replace("_", "")
    factor = {"k": 1_000, "m": 1_000_000, "g": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if factor > 1 else text) * factor)


def add_arguments(parser) -> None:
    parser.add_argument("--filters", default="10M", help="number of synthetic filters, e.g. 1M, 10M (default 10M)")
    parser.add_argument("--by", default="task", help="axis of the analysis, or several separated by commas (default task)")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"folder of the synthetic DBs (default {DEFAULT_CACHE})")
    parser.add_argument("--study-max", default="20M", help="skip the study's recipe above this many filters (default 20M)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each contender, best kept (default 2)")
    parser.add_argument("--address", default=None, help="Ray address (default: a local Ray)")
    parser.add_argument("--steps", action="store_true", help="only the CPU nanoseconds per filter of every piece of work, in one process")
    parser.add_argument("--workers", default="all,1,2", help="parallel tasks of the flow's runs besides Ray's default ('all', always run: the baseline), e.g. 1,2 (default all,1,2)")


def run(args) -> int:
    if args.steps:
        step_costs(parse_count(args.filters), by=args.by, cache=args.cache, repeats=args.repeats).report(args.json)
        return 0
    figures = run_shifts_benchmark(parse_count(args.filters), by=args.by, cache=args.cache, study_max=parse_count(args.study_max), repeats=args.repeats, address=args.address,
                                   workers=tuple(None if w == "all" else int(w) for w in args.workers.split(",")))
    shifts_table(figures).report(args.json)
    return 0
