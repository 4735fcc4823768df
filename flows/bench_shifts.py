"""Benchmark of the shift analysis (issue 5): `python -m flows.bench_shifts --filters 10M`.

In one run, on one synthetic DB (generated once under the cache folder, then reused):
- scan: the rate at which this machine merely reads the `weights` column from Lance (the practical
  limit of any pass over the data);
- flow: `run_shifts` on Ray with 1 and 2 workers (Ray started beforehand; its start is reported apart);
- in-memory: the same aggregates (`ops.shifts.analyse`) on a numpy array already in memory;
- study: the study's single-process recipe: load everything, scikit-learn PCA, per-group
  `numpy.histogram`, `scipy.stats.entropy` (skipped above `--study-max`, where it would not fit);
- peak memory of the flow (driver plus Ray's processes) at this size.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.schema import FILTERS_SCHEMA, META_COLUMNS

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
    meta columns per model); generated once, then reused."""
    db = Path(cache) / f"shifts_{n_filters}"
    uri = db / "filters.lance"
    if uri.exists() and lance.dataset(str(uri)).count_rows() == n_filters:
        return db
    db.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_models = max(1, n_filters // FILTERS_PER_MODEL)
    mode = "overwrite"
    for start in range(0, n_filters, FRAGMENT_ROWS):
        rows = min(FRAGMENT_ROWS, n_filters - start)
        first, last = start * n_models // n_filters, min(n_models - 1, (start + rows - 1) * n_models // n_filters)
        table = _table(rng, first, last - first + 1, rows)
        lance.write_dataset(table, str(uri), mode=mode, max_rows_per_file=FRAGMENT_ROWS)
        mode = "append"
    return db
