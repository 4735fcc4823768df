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
from pathlib import Path

import lance
import pyarrow as pa

from ops.schema import FILTERS_SCHEMA, LAYERS_SCHEMA, META_COLUMNS

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
        pa.field("notes", pa.string()),
        pa.field("device", pa.string()),  # where the metrics and the dummy forward pass ran  # e.g. why depth fell back to layer order
        pa.field("load_seconds", pa.float64()),
        pa.field("extract_seconds", pa.float64()),
        pa.field("extracted_at", pa.timestamp("us", tz="UTC")),
    ]
)
SCHEMAS = {"models": MODELS_SCHEMA, "layers": LAYERS_SCHEMA, "filters": FILTERS_SCHEMA}


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

    def append_models(self, rows: list[dict]) -> None:
        """Add models rows. Extra catalog columns become new string columns of `models`, and columns
        added to MODELS_SCHEMA since a DB was created are added to it (null for older rows)."""
        if not rows:
            return
        extra = sorted({k for row in rows for k in row} - set(MODELS_SCHEMA.names))
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
