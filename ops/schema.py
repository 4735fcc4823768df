"""Arrow schemas of the three Lance datasets of a filterdb DB (the data contract of design.md)."""

import pyarrow as pa

META_COLUMNS = ("family", "task", "train_dataset", "pretrain_dataset", "visual_category")
"""Meta-parameters every catalog row may carry; repeated on every filter row as plain strings."""

WEIGHTS_TYPE = pa.list_(pa.float32(), 9)

FILTERS_SCHEMA = pa.schema(
    [
        pa.field("model_id", pa.string(), nullable=False),
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
