"""The data contract of the DB's three tables: their schemas, the models row, a written-but-
uncommitted model. Reading and writing (the write protocol) go through `ops.db` (`open_db`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

META_COLUMNS = ("family", "task", "train_dataset", "pretrain_dataset", "visual_category")
"""Meta-parameters every catalog row may carry; repeated on every filter row as plain strings."""

WEIGHTS_TYPE = pa.list_(pa.float32(), 9)

FILTERS_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        # model_key(model_id): what analyses read to group filters by model (8 bytes, decoded several
        # times faster than the strings); added in filterdb 0.2, `filterdb upgrade` adds it to older DBs.
        pa.field("model_key", pa.int64(), nullable=False),
        pa.field("layer_index", pa.int32(), nullable=False),
        pa.field("out_index", pa.int32(), nullable=False),
        pa.field("in_index", pa.int32(), nullable=False),
        pa.field("conv_depth", pa.int32(), nullable=False),
        # float64 so that depth bins at exact tenths (0.1, 0.2, ...) are not shifted by float32 rounding.
        pa.field("conv_depth_norm", pa.float64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("weights", WEIGHTS_TYPE, nullable=False),
        *[pa.field(name, pa.string()) for name in META_COLUMNS],
    ]
)

QUALITY_COLUMNS = (
    "sparsity",
    "variance_entropy",
    "variance_entropy_norm",
    "variance_entropy_clean",
    "variance_entropy_clean_norm",
    "orthogonality",
)

LAYERS_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("layer_index", pa.int32(), nullable=False),
        pa.field("layer_name", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("kernel_h", pa.int32(), nullable=False),
        pa.field("kernel_w", pa.int32(), nullable=False),
        pa.field("in_channels", pa.int32(), nullable=False),
        pa.field("out_channels", pa.int32(), nullable=False),
        pa.field("groups", pa.int32(), nullable=False),
        pa.field("conv_depth", pa.int32(), nullable=False),
        pa.field("conv_depth_norm", pa.float64(), nullable=False),
        pa.field("depth_method", pa.string(), nullable=False),
        pa.field("n_filters", pa.int64(), nullable=False),
        *[pa.field(name, pa.float64()) for name in QUALITY_COLUMNS],
    ]
)

TABLES = ("models", "layers", "filters")


def model_key(model_id: str) -> int:
    """The int64 key of a model id in filters.lance: the first 8 bytes of its BLAKE2b digest, signed
    little-endian. Computed from the id alone, so that any worker writes it without coordination;
    readers check that the keys they use are distinct (two ids with one key are read by id instead)."""
    return int.from_bytes(hashlib.blake2b(model_id.encode(), digest_size=8).digest(), "little", signed=True)


def model_keys(model_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
    """model_key of every value of a string column; rows come grouped by model, so each run is hashed once."""
    if isinstance(model_ids, pa.ChunkedArray):
        model_ids = model_ids.combine_chunks()
    runs = pc.run_end_encode(model_ids)
    keys = np.array([model_key(v) for v in runs.values.to_pylist()], np.int64)
    return pa.array(np.repeat(keys, np.diff(runs.run_ends.to_numpy(), prepend=0)), pa.int64())

MODELS_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("source", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("arch", pa.string()),
        pa.field("input_size", pa.string()),
        pa.field("pretrained", pa.bool_()),
        pa.field("seed", pa.int64()),
        *[pa.field(name, pa.string()) for name in META_COLUMNS],
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("weights_digest", pa.string()),
        pa.field("source_fingerprint", pa.string()),
        pa.field("n_conv_layers", pa.int64()),
        pa.field("n_filters_3x3", pa.int64()),
        pa.field("kernel_shapes", pa.string()),
        pa.field("share_3x3", pa.float64()),
        pa.field("depth_method", pa.string()),
        pa.field("notes", pa.string()),  # e.g. why depth fell back to layer order
        pa.field("device", pa.string()),  # where the metrics and the dummy forward pass ran
        pa.field("node", pa.string()),  # the Ray node id of the worker that extracted it (null without Ray)
        pa.field("load_seconds", pa.float64()),
        pa.field("extract_seconds", pa.float64()),
        pa.field("extracted_at", pa.timestamp("us", tz="UTC")),
    ]
)
SCHEMAS = {"models": MODELS_SCHEMA, "layers": LAYERS_SCHEMA, "filters": FILTERS_SCHEMA}


@dataclass
class ModelsRow:
    """One row of models.lance: values of schema columns, and the catalog's extra columns (strings,
    which become string columns of models.lance). A name that is neither is an error, so a mistyped
    name never becomes a column. Built by ops.model_rows.models_row."""

    columns: dict
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.update(**self.columns)

    def update(self, **columns) -> None:
        unknown = sorted(set(columns) - set(MODELS_SCHEMA.names))
        if unknown:
            raise KeyError(f"not columns of models.lance: {', '.join(unknown)} (the columns: {', '.join(MODELS_SCHEMA.names)})")
        self.columns.update(columns)

    def __getitem__(self, name: str):
        return self.columns[name] if name in MODELS_SCHEMA.names else self.extra[name]

    def get(self, name: str, default=None):
        return self.columns.get(name, default) if name in MODELS_SCHEMA.names else self.extra.get(name, default)


@dataclass
class WrittenModel:
    """A model whose data files are written but not committed: its models row and the fragments of
    its `filters` and `layers` rows (none for a failed model)."""

    row: ModelsRow
    filters: list = field(default_factory=list)
    layers: list = field(default_factory=list)


def sql_list(values) -> str:
    """A SQL list literal of strings, quotes escaped: ('a', 'b''s')."""
    return "(" + ", ".join("'" + str(v).replace("'", "''") + "'" for v in values) + ")"


def __getattr__(name: str):
    """`FilterDB` moved to ops.db (the one way into the DB); the old import keeps working."""
    if name == "FilterDB":
        from ops.db import FilterDB

        return FilterDB
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
