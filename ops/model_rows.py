"""A model's rows of the three tables: its `models` row, its `layers` table, its `filters` table."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import torch

from ops.catalog import CatalogEntry
from ops.layers import ModelLayers
from ops.store import FILTERS_SCHEMA, LAYERS_SCHEMA, META_COLUMNS, QUALITY_COLUMNS, ModelsRow, model_key


def models_row(entry: CatalogEntry, **columns) -> ModelsRow:
    """The `models` row of a catalog entry: its catalog columns and extra catalog columns, and
    `columns` (e.g. status, error, the model's facts), each of which must be a models.lance column."""
    row = ModelsRow({
        "model_id": entry.model_id,
        "source": entry.source,
        "uri": entry.uri,
        "arch": entry.arch,
        "input_size": "x".join(map(str, entry.input_size)) if entry.input_size else None,
        "pretrained": entry.pretrained,
        "seed": entry.seed,
        **entry.meta,
        "extracted_at": datetime.now(timezone.utc),
    }, extra=dict(entry.extra))
    row.update(**columns)
    return row


def is_3x3(weight: np.ndarray) -> bool:
    return weight.shape[2:] == (3, 3)


def check_weights(model: ModelLayers) -> None:
    """Refuse a model without convolutions or with NaN/Inf weights, naming the layer."""
    if not model.layers:
        raise ValueError("no 2-D convolution layers found")
    for index, layer in enumerate(model.layers):
        bad = int(np.size(layer.weight) - np.count_nonzero(np.isfinite(layer.weight)))
        if bad:
            raise ValueError(f"layer {index} ({layer.name}): {bad} NaN/Inf weight values")


def weights_digest(model: ModelLayers) -> str:
    """sha256 of the convolution weights (shapes and float32 bytes, in layer order).

    Independent of the file format, so the same model read from state_dict, TorchScript or ONNX
    has the same digest.
    """
    digest = hashlib.sha256()
    for layer in model.layers:
        digest.update(repr(tuple(layer.weight.shape)).encode())
        digest.update(np.ascontiguousarray(layer.weight, dtype=np.float32).tobytes())
    return digest.hexdigest()


def model_facts(model: ModelLayers) -> dict:
    """Counts for the models table: layers, 3x3 kernels, the histogram of kernel shapes."""
    shapes = Counter()
    for layer in model.layers:
        shapes["{}x{}".format(*layer.kernel_size)] += layer.n_filters
    total = sum(shapes.values())
    return {
        "n_conv_layers": len(model.layers),
        "n_filters_3x3": int(shapes.get("3x3", 0)),
        "kernel_shapes": json.dumps(dict(shapes.most_common())),
        "share_3x3": shapes.get("3x3", 0) / total if total else 0.0,
        "depth_method": model.depth_method,
    }


def layers_table(model_id: str, model: ModelLayers, device: str = "cpu") -> pa.Table:
    """One row per convolution; quality metrics for 3x3 layers (measured together on `device`), else null."""
    from ops.metrics import quality_of_layers

    indices = [i for i, layer in enumerate(model.layers) if is_3x3(layer.weight)]
    measured = quality_of_layers([torch.from_numpy(model.layers[i].weight) for i in indices], device=device)
    qualities = dict(zip(indices, measured))
    rows = []
    for index, layer in enumerate(model.layers):
        quality = qualities.get(index, dict.fromkeys(QUALITY_COLUMNS))
        rows.append({
            "model_id": model_id,
            "layer_index": index,
            "layer_name": layer.name,
            "kind": layer.kind,
            "kernel_h": layer.kernel_size[0],
            "kernel_w": layer.kernel_size[1],
            "in_channels": layer.in_channels,
            "out_channels": layer.out_channels,
            "groups": layer.groups,
            "conv_depth": layer.conv_depth,
            "conv_depth_norm": model.depth_norm(layer),
            "depth_method": model.depth_method,
            "n_filters": layer.n_filters,
            **quality,
        })
    return pa.Table.from_pylist(rows, schema=LAYERS_SCHEMA)


def filters_table(model_id: str, model: ModelLayers, meta: dict[str, str]) -> pa.Table:
    """One row per 3x3 kernel, weights bit-exact in storage order.

    `out_index`/`in_index` name the output and input channel (within its group); for a
    transposed layer, whose weight is `(in, out/groups, 3, 3)`, that is dim 1 and dim 0.
    """
    parts = {name: [] for name in ("layer_index", "out_index", "in_index", "conv_depth", "conv_depth_norm")}
    kinds, weights = [], []
    for index, layer in enumerate(model.layers):
        if not is_3x3(layer.weight):
            continue
        first, second = layer.weight.shape[:2]
        n = first * second
        dim0, dim1 = np.repeat(np.arange(first, dtype=np.int32), second), np.tile(np.arange(second, dtype=np.int32), first)
        out_index, in_index = (dim1, dim0) if layer.transposed else (dim0, dim1)
        parts["layer_index"].append(np.full(n, index, np.int32))
        parts["out_index"].append(out_index)
        parts["in_index"].append(in_index)
        parts["conv_depth"].append(np.full(n, layer.conv_depth, np.int32))
        parts["conv_depth_norm"].append(np.full(n, model.depth_norm(layer), np.float64))
        kinds.append((layer.kind, n))
        weights.append(np.ascontiguousarray(layer.weight, dtype=np.float32).reshape(-1))
    n_rows = sum(n for _, n in kinds)
    columns = {name: np.concatenate(arrays) if arrays else np.zeros(0) for name, arrays in parts.items()}
    flat = np.concatenate(weights) if weights else np.zeros(0, np.float32)
    return pa.table(
        {
            "model_id": _repeat(model_id, n_rows),
            "model_key": pa.array(np.full(n_rows, model_key(model_id), np.int64)),
            **{name: pa.array(values, type=FILTERS_SCHEMA.field(name).type) for name, values in columns.items()},
            "kind": pa.chunked_array([_repeat(kind, n) for kind, n in kinds], pa.string())
            if kinds else pa.array([], pa.string()),
            "weights": pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), 9),
            **{name: _repeat(meta.get(name), n_rows) for name in META_COLUMNS},
        },
        schema=FILTERS_SCHEMA,
    )


def _repeat(value: str | None, n: int) -> pa.Array:
    if value is None:
        return pa.nulls(n, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value])).cast(pa.string())
