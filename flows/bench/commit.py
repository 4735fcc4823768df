"""Benchmark of the driver's commit path at scale: `filterdb bench commit --models 10000`.

Synthetic models (`--filters` filter rows and one layer each) have their data files written
beforehand, as the extraction actors write them (the seconds per model are reported apart); then the
driver's `Committer` (flows/extract.py) makes them visible through `FilterDB.commit_models`:

- one model per commit (as the single-process loop does), on the first `--single` models;
- groups of `--group` models per commit (as the Ray flow does with what arrived in its 5 s window),
  on all of them, without compaction during the run, and compacted every COMPACT_EVERY_MODELS
  models as the Committer does.

For each: models/s, the commit seconds of the first and the last tenth of the groups (growth as the
tables grow), fragments and manifest size of each table at the end, the final compaction, the time
to read the `layers` table before and after it, the driver's memory growth (sampled RSS) and the
bytes of one written model as the driver receives it.
"""

from __future__ import annotations

import glob
import math
import os
import pickle
import shutil
import tempfile
import time

import numpy as np
import pyarrow as pa

from flows.bench.timing import Column, FigureTable, PeakMemory, Ratio
from flows.extract import COMPACT_EVERY_MODELS, Committer
from flows.progress import ExtractProgress, ExtractSummary
from ops.db import open_db
from ops.store import FILTERS_SCHEMA, LAYERS_SCHEMA, META_COLUMNS, QUALITY_COLUMNS, ModelsRow, model_key

HELP = "the driver's commits of thousands of written models: rate, fragments, compaction, memory"


def synthetic_model(db, index: int, filters: int, rng: np.random.Generator):
    """Write the data files of one synthetic model (as an actor does) and return its WrittenModel."""
    model_id = f"synthetic-{index:06d}"
    zeros = np.zeros(filters, np.int32)
    filter_rows = pa.table({
        "model_id": pa.array([model_id] * filters), "model_key": np.full(filters, model_key(model_id), np.int64), "layer_index": zeros, "out_index": np.arange(filters, dtype=np.int32),
        "in_index": zeros, "conv_depth": zeros, "conv_depth_norm": np.zeros(filters), "kind": pa.array(["conv"] * filters),
        "weights": pa.FixedSizeListArray.from_arrays(pa.array(rng.standard_normal(filters * 9, dtype=np.float32)), 9),
        **{name: pa.array(["synthetic"] * filters) for name in META_COLUMNS},
    }, schema=FILTERS_SCHEMA)
    layer_rows = pa.Table.from_pylist([{
        "model_id": model_id, "layer_index": 0, "layer_name": "conv", "kind": "conv", "kernel_h": 3, "kernel_w": 3,
        "in_channels": 1, "out_channels": filters, "groups": 1, "conv_depth": 0, "conv_depth_norm": 0.0,
        "depth_method": "graph", "n_filters": filters, **{name: 0.5 for name in QUALITY_COLUMNS},
    }], schema=LAYERS_SCHEMA)
    row = ModelsRow({"model_id": model_id, "source": "synthetic", "status": "ok", "n_filters_3x3": filters,
                     "n_conv_layers": 1, "error": None, "notes": None,
                     **{name: "synthetic" for name in META_COLUMNS}})
    return db.write_model_files(row, filter_rows, layer_rows)


def manifest_bytes(table_uri: str) -> int:
    manifests = glob.glob(os.path.join(table_uri, "_versions", "*.manifest"))
    return os.path.getsize(max(manifests, key=os.path.getmtime)) if manifests else 0


def commit_run(folder: str, models: int, group: int, filters: int, compact_every: int = COMPACT_EVERY_MODELS,
               seed: int = 0) -> dict:
    """Write `models` synthetic models into a new DB in `folder`, commit them `group` at a time
    through the Committer (compacting every `compact_every` models, 0: never), then compact;
    returns the figures."""
    db = open_db(folder, must_exist=False)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    written = [synthetic_model(db, i, filters, rng) for i in range(models)]
    write_s = time.perf_counter() - started

    bar = ExtractProgress(ExtractSummary(total=models), enabled=False)
    committer = Committer(db, {}, force=False, bar=bar, every_s=math.inf, compact_every=compact_every)
    group_seconds = []
    with PeakMemory() as memory:
        for start in range(0, models, group):
            before = time.perf_counter()
            for model in written[start:start + group]:
                committer.add(model)
            committer.flush()
            group_seconds.append(time.perf_counter() - before)
    commit_s = sum(group_seconds)
    del written

    db.refresh()
    fragments = {t: len(db.latest_dataset(t).get_fragments()) for t in ("filters", "layers", "models")}
    manifests = {t: manifest_bytes(db.table_uri(t)) for t in ("filters", "layers", "models")}
    layers_read_s = _read_seconds(db, "layers")
    before = time.perf_counter()
    db.compact()
    compact_s = time.perf_counter() - before
    db.refresh()
    assert db.latest_dataset("filters").count_rows() == models * filters, "rows lost in the commits"
    assert len(bar.summary.stored) == models
    tenth = max(1, len(group_seconds) // 10)
    return {
        "models": models, "commits": len(group_seconds), "write_s_per_model": write_s / models,
        "commit_s": commit_s, "models_per_s": models / commit_s,
        "first_tenth_s": float(np.mean(group_seconds[:tenth])), "last_tenth_s": float(np.mean(group_seconds[-tenth:])),
        "fragments_filters": fragments["filters"], "fragments_layers": fragments["layers"],
        "fragments_models": fragments["models"], "manifest_kib_filters": manifests["filters"] / 1024,
        "compact_s": compact_s, "total_s": commit_s + compact_s, "fragments_after": len(db.latest_dataset("filters").get_fragments()),
        "layers_read_s": layers_read_s, "layers_read_after_s": _read_seconds(db, "layers"),
        "driver_growth_mib": (memory.peak - memory.baseline) / 2**20,
    }


def _read_seconds(db, table: str) -> float:
    before = time.perf_counter()
    db.latest_dataset(table).to_table()
    return time.perf_counter() - before


def written_model_bytes(filters: int) -> int:
    """What the driver receives per model: the pickled WrittenModel (models row and fragment metadata)."""
    folder = tempfile.mkdtemp(prefix="filterdb-bench-commit-")
    try:
        return len(pickle.dumps(synthetic_model(open_db(folder, must_exist=False), 0, filters, np.random.default_rng(0))))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def commit_table(runs: dict[str, dict], model_bytes: int) -> FigureTable:
    table = FigureTable(
        "driver commits of written models (FilterDB.commit_models through the Committer)",
        [Column("models", "models", "{:,}".format), Column("commits", "commits", "{:,}".format),
         Column("models/s", "models_per_s", "{:,.0f}".format), Ratio("ratio", "models_per_s"),
         Column("s/commit first 10%", "first_tenth_s", "{:.3f}".format),
         Column("last 10%", "last_tenth_s", "{:.3f}".format),
         Column("fragments f/l/m", "fragments", str), Column("compact s", "compact_s", "{:.1f}".format),
         Column("total s", "total_s", "{:.1f}".format),
         Column("read layers s", "layers_read_s", "{:.2f}".format),
         Column("compacted", "layers_read_after_s", "{:.3f}".format),
         Column("driver +MiB", "driver_growth_mib", "{:.0f}".format)],
        baseline="one model per commit", name_header="commits of")
    for name, figures in runs.items():
        table.add(name, {**figures, "fragments": f"{figures['fragments_filters']:,}/{figures['fragments_layers']:,}/{figures['fragments_models']:,}"})
    write = np.mean([f["write_s_per_model"] for f in runs.values()])
    table.notes += [
        f"written beforehand (the actors' part, not timed above): {write * 1000:.1f} ms per model; "
        f"the driver receives {model_bytes:,} bytes per model (models row and fragment metadata, no filter values)",
        "s/commit: mean seconds of one commit in the first and the last tenth of the run; fragments of "
        "filters/layers/models before the final compaction (one each after it); compact s: the final "
        "compaction; total: the commits (with the compactions during the run) and the final compaction; "
        "read layers: the whole layers table read before and after the final compaction",
        "latest manifest of filters.lance: " + ", ".join(f"{name} {f['manifest_kib_filters']:,.0f} KiB" for name, f in runs.items()),
    ]
    table.extra["runs"] = runs
    return table


def add_arguments(parser) -> None:
    parser.add_argument("--models", type=int, default=10_000, help="synthetic models committed in groups")
    parser.add_argument("--group", type=int, default=50, help="models per commit in the grouped run")
    parser.add_argument("--single", type=int, default=500, help="models committed one per commit (the baseline)")
    parser.add_argument("--filters", type=int, default=64, help="filter rows per synthetic model")
    parser.add_argument("--dir", help="folder for the DBs (default: a temporary folder, removed afterwards)")


def run(args) -> int:
    os.environ.setdefault("RUST_LOG", "error")  # Lance warns once per data file written before its table exists
    folder = args.dir or tempfile.mkdtemp(prefix="filterdb-bench-commit-")
    try:
        runs = {"one model per commit": commit_run(os.path.join(folder, "single"), args.single, 1, args.filters),
                f"groups of {args.group}, never compacted": commit_run(os.path.join(folder, "grouped"), args.models,
                                                                       args.group, args.filters, compact_every=0),
                f"groups of {args.group}, compacted every {COMPACT_EVERY_MODELS}": commit_run(
                    os.path.join(folder, "compacted"), args.models, args.group, args.filters)}
        commit_table(runs, written_model_bytes(args.filters)).report(args.json)
    finally:
        if not args.dir:
            shutil.rmtree(folder, ignore_errors=True)
    return 0
