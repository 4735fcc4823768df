"""The filterdb DB: a folder (or URI prefix) with models.lance, layers.lance and filters.lance.

Write order and recovery rule (three tables cannot share one transaction):
1. a model's `filters` rows are committed, then its `layers` rows, then its `models` row;
2. a model is complete when it has a `models` row with status `ok`; that row is written last;
3. `recover()` (run by every writer before it starts) deletes `filters`/`layers` rows of models
   without such a row, so an interrupted run leaves nothing half-stored once a writer has run again.
Re-extracting a model first deletes its `models` row, then its other rows, so a crash in between is
recovered by the same rule. Readers that must never see an interrupted write select model ids
from `models` (status `ok`), which is what the query API does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import lance
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

TABLES = ("models", "layers", "filters")

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


class FilterDB:
    def __init__(self, path: str | os.PathLike):
        self.path = str(path).rstrip("/")

    def uri(self, table: str) -> str:
        return f"{self.path}/{table}.lance"

    def dataset(self, table: str) -> lance.LanceDataset | None:
        try:
            return lance.dataset(self.uri(table))
        except (ValueError, FileNotFoundError, OSError):
            return None

    # --- reading -------------------------------------------------------------------------------

    def models(self, columns: list[str] | None = None, where: str | None = None) -> pa.Table:
        ds = self.dataset("models")
        if ds is None:
            return MODELS_SCHEMA.empty_table()
        return ds.to_table(columns=columns, filter=where)

    def stored_models(self) -> dict[str, dict]:
        """model_id -> its models row (status, weights_digest, fingerprint)."""
        table = self.models(columns=["model_id", "status", "weights_digest", "source_fingerprint"])
        return {row["model_id"]: row for row in table.to_pylist()}

    # --- writing -------------------------------------------------------------------------------

    @staticmethod
    def write_fragments(uri: str, table: pa.Table, schema: pa.Schema) -> list:
        """Write data files for `table` without committing (any process; the driver commits)."""
        if table.num_rows == 0:
            return []
        return lance.fragment.write_fragments(table.cast(schema), uri, schema=schema)

    def commit(self, table: str, fragments: list, schema: pa.Schema | None = None) -> None:
        """Make written fragments visible in one commit (creating the dataset on first use)."""
        if not fragments:
            return
        ds = self.dataset(table)
        if ds is None:
            if "://" not in self.path:
                Path(self.path).mkdir(parents=True, exist_ok=True)
            operation = lance.LanceOperation.Overwrite(schema or SCHEMAS[table], fragments)
            lance.LanceDataset.commit(self.uri(table), operation)
        else:
            lance.LanceDataset.commit(self.uri(table), lance.LanceOperation.Append(fragments),
                                      read_version=ds.version)

    def append(self, table: str, data: pa.Table) -> None:
        ds = self.dataset(table)
        schema = ds.schema if ds is not None else SCHEMAS[table]
        self.commit(table, self.write_fragments(self.uri(table), data, schema))

    def append_models(self, rows: list[ModelsRow]) -> None:
        """Add models rows. Their extra catalog columns become new string columns of `models`, and
        columns added to MODELS_SCHEMA since a DB was created are added to it (null for older rows)."""
        if not rows:
            return
        extra = sorted({name for row in rows for name in row.extra} - set(MODELS_SCHEMA.names))
        wanted = list(MODELS_SCHEMA) + [pa.field(name, pa.string()) for name in extra]
        ds = self.dataset("models")
        if ds is not None:
            new = [f for f in wanted if f.name not in ds.schema.names]
            if new:
                ds.add_columns(new)
                ds = self.dataset("models")
            schema = ds.schema
        else:
            schema = pa.schema(wanted)
        table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
        self.commit("models", self.write_fragments(self.uri("models"), table, schema), schema)

    def write_model_files(self, row: ModelsRow, filters: pa.Table | None, layers: pa.Table | None) -> WrittenModel:
        """Write the data files of one extracted model, uncommitted (in whatever process extracted it)."""
        if row["status"] != "ok":
            return WrittenModel(row)
        return WrittenModel(row, self.write_fragments(self.uri("filters"), filters, FILTERS_SCHEMA),
                            self.write_fragments(self.uri("layers"), layers, LAYERS_SCHEMA))

    def commit_models(self, models: list[WrittenModel], replacing: set[str] | frozenset = frozenset()) -> None:
        """Make written models visible, in the order of the module doc: the stored rows of the models in
        `replacing` removed (their models rows first), then all filters, all layers, and last the
        models rows, each table in one commit."""
        if not models:
            return
        self.remove_models([m.row["model_id"] for m in models if m.row["model_id"] in replacing])
        self.commit("filters", [f for m in models for f in m.filters])
        self.commit("layers", [f for m in models for f in m.layers])
        self.append_models([m.row for m in models])

    def remove_models(self, model_ids) -> None:
        """Delete every row of these models; the `models` row goes first (see the module doc)."""
        model_ids = list(model_ids)
        if not model_ids:
            return
        predicate = f"model_id IN {sql_list(model_ids)}"
        for table in TABLES:
            ds = self.dataset(table)
            if ds is not None:
                ds.delete(predicate)

    def recover(self) -> list[str]:
        """Delete rows of models that have no `ok` models row; returns the ids removed."""
        complete = self.models(columns=["model_id", "n_filters_3x3", "n_conv_layers"], where="status = 'ok'")
        expected = {"filters": sum(complete.column("n_filters_3x3").to_pylist()),
                    "layers": sum(complete.column("n_conv_layers").to_pylist())}
        ids = set(complete.column("model_id").to_pylist())
        removed: set[str] = set()
        for table in ("filters", "layers"):
            ds = self.dataset(table)
            if ds is None or ds.count_rows() == expected[table]:
                continue
            present = set(ds.to_table(columns=["model_id"]).column("model_id").unique().to_pylist())
            orphans = present - ids
            if orphans:
                ds.delete(f"model_id IN {sql_list(sorted(orphans))}")
                removed |= orphans
        return sorted(removed)

    def compact(self) -> None:
        """Merge the small fragments of many per-model commits into large files."""
        for table in TABLES:
            ds = self.dataset(table)
            if ds is not None and len(ds.get_fragments()) > 1:
                ds.optimize.compact_files()
