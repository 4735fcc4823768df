"""The filterdb DB, and the one way into it: `db = open_db(path_or_uri, version=None, storage_options=None)`.

A DB is a folder or URI prefix (`s3://bucket/db`, `gs://...`, `az://...`, `file:///...`) holding
`models.lance`, `layers.lance`, `filters.lance`, the analysis tables under `analysis/` and
`snapshots.lance`. Every reader and writer goes through `FilterDB`; table URIs are joined as strings,
never with `pathlib`, and storage options are passed to Lance wherever a table is opened.

Write order and recovery (three tables cannot share one transaction):
1. a model's `filters` rows are committed, then its `layers` rows, then its `models` row;
2. a model is complete exactly when it has a `models` row with status `ok`, written last;
3. `recover()` (run by every writer before it starts) deletes `filters`/`layers` rows of models
   without such a row, so an interrupted run leaves nothing half-stored once a writer has run again.
Re-extracting a model first deletes its `models` row, then its other rows.

Reading: a DB object pins one version of each table when it first reads (models first, then layers,
then filters, and again if `models` moved meanwhile), and shows `layers`/`filters` rows only of models
whose pinned `models` row is `ok`. By the write order those models' rows are all present, so a
reader never sees a half-written model, even while an extraction commits. `refresh()` moves to the
latest versions; `open_db(..., version=N)` reads snapshot N (see `snapshot`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.errors import UsageError
from ops.predicates import SOURCE_LOCATION, predicate_error
from ops.store import META_COLUMNS, MODELS_SCHEMA, SCHEMAS, TABLES, ModelsRow, WrittenModel, model_keys, sql_list

ANALYSIS_FOLDER = "analysis"
KNOWN_ANALYSIS_TABLES = ("basis", "histograms", "shifts", "quality")
"""Analysis tables looked for where the folder cannot be listed (object stores)."""
SNAPSHOTS_TABLE = "snapshots"

SCALAR_INDEXES = {
    "models": {"model_id": "BTREE"},
    "layers": {"model_id": "BTREE"},
    "filters": {"model_id": "BTREE", "layer_index": "BTREE", "conv_depth_norm": "BTREE", "kind": "BITMAP",
                **{name: "BITMAP" for name in META_COLUMNS}},
}
"""Scalar indexes the writer keeps on each table: one model's rows, a depth range or a meta-parameter
value come back without a full scan."""

VECTOR_INDEX = {"index_type": "IVF_FLAT", "metric": "cosine", "rows_per_partition": 8192}
"""`filterdb index`: IVF over the filter weights by cosine distance (`ops.similarity`). IVF_FLAT keeps
the 9-d vectors exact (IVF_PQ would quantise them)."""

SNAPSHOTS_SCHEMA = pa.schema([
    pa.field("snapshot", pa.int64(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("kind", pa.string(), nullable=False),  # extract, shifts, quality, ...
    pa.field("note", pa.string()),
    pa.field("models_added", pa.int64()),
    pa.field("models_removed", pa.int64()),
    pa.field("models_failed", pa.int64()),
    pa.field("models_ok", pa.int64()),
    pa.field("rows_models", pa.int64()),
    pa.field("rows_layers", pa.int64()),
    pa.field("rows_filters", pa.int64()),
    pa.field("versions", pa.string(), nullable=False),  # JSON: table name -> Lance version
])

AS_KINDS = ("pandas", "arrow", "numpy", "torch")


class TableUnreadable(UsageError):
    """A table that exists but cannot be opened (corrupt, no permission, a storage error): never
    taken for an absent table, so that no writer replaces it."""


def open_db(path_or_uri: str | os.PathLike, version: int | None = None, storage_options: dict | None = None,
            must_exist: bool = True) -> FilterDB:
    """The DB at a folder or URI. `version`: a snapshot number (`db.snapshots()`), read consistently;
    `storage_options` go to Lance (object-store credentials, endpoint, region). `must_exist=False`
    for a writer that creates the DB; otherwise a missing DB raises UsageError."""
    db = FilterDB(path_or_uri, version=version, storage_options=storage_options)
    if must_exist and db.dataset("models") is None:
        raise UsageError(f"no DB at {db.root} (no models.lance there): run `filterdb extract CATALOG --db {db.root}` "
                         f"first, or check the path")
    return db


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://"):] if uri.startswith("file://") else uri


def _absent(error: Exception) -> bool:
    """Lance's way of saying that no dataset exists at a URI (no `_versions`), and only that."""
    return isinstance(error, (ValueError, FileNotFoundError)) and "was not found" in str(error)


def _index_kind(type_url: str) -> str:
    """'/lance.table.BTreeIndexDetails' -> 'BTree'; the vector index's details say 'Vector'."""
    return re.sub(r"(Index)?Details$", "", type_url.rsplit(".", 1)[-1])


def _one_line(error: Exception) -> str:
    return SOURCE_LOCATION.sub("", str(error)).strip().splitlines()[0] if str(error) else type(error).__name__


def _complete_models(models: lance.LanceDataset | None) -> tuple[list[str], dict[str, int]]:
    """The ids of the models with an ok row, and the layers and filters rows they account for (the
    counts that, by the write order, the tables hold when no other rows are stored)."""
    if models is None:
        return [], {"layers": 0, "filters": 0}
    ok = models.to_table(columns=["model_id", "n_filters_3x3", "n_conv_layers"], filter="status = 'ok'")
    return ok.column("model_id").to_pylist(), {"filters": sum(v or 0 for v in ok.column("n_filters_3x3").to_pylist()),
                                               "layers": sum(v or 0 for v in ok.column("n_conv_layers").to_pylist())}


class FilterDB:
    """The DB at `root` (a folder or URI prefix): reading, SQL, similarity search, snapshots, and the
    write protocol of the module doc. Open it with `open_db`."""

    def __init__(self, root: str | os.PathLike, version: int | None = None, storage_options: dict | None = None):
        self.root = str(root).rstrip("/")
        self.storage_options = storage_options
        self.version = version
        self._pinned: dict[str, lance.LanceDataset | None] | None = None
        self._snapshot_versions: dict[str, int] | None = None
        self._visible: dict | None = None
        self._sql = None
        self._schemas: dict[str, pa.Schema] = {}  # the stored tables' schemas, as writers write them
        if version is not None:
            self._snapshot_versions = self._versions_of_snapshot(version)

    @property
    def path(self) -> str:
        """The root (kept for callers of the earlier store API)."""
        return self.root

    def __repr__(self) -> str:
        return f"open_db({self.root!r}{'' if self.version is None else f', version={self.version}'})"

    # --- tables --------------------------------------------------------------------------------

    def table_uri(self, table: str) -> str:
        """URI of a table: one of models, layers, filters, snapshots, or `analysis/NAME`."""
        return f"{self.root}/{table}.lance"

    uri = table_uri

    def analysis_uri(self, name: str) -> str:
        return self.table_uri(f"{ANALYSIS_FOLDER}/{name}")

    def _open(self, table: str, version: int | None = None) -> lance.LanceDataset | None:
        """The table's dataset at `version` (default latest); None only when no table exists there."""
        try:
            return lance.dataset(self.table_uri(table), version=version, storage_options=self.storage_options)
        except Exception as error:  # noqa: BLE001 - Lance raises ValueError/OSError/IOError for many things
            if _absent(error):
                return None
            raise TableUnreadable(f"{self.table_uri(table)} cannot be opened ({_one_line(error)}); check the path, "
                                  f"permissions and storage options (it is not taken for an absent table; nothing was changed)") from None

    def latest_dataset(self, table: str) -> lance.LanceDataset | None:
        """The latest version of a table (writers), or None when it does not exist."""
        return self._open(table)

    def _pin(self) -> dict[str, lance.LanceDataset | None]:
        """The versions this object reads: a snapshot's, or the latest, opened models first."""
        if self._pinned is not None:
            return self._pinned
        if self._snapshot_versions is not None:
            versions = self._snapshot_versions
            self._pinned = {t: self._open(t, versions[t]) if t in versions else None for t in TABLES}
            return self._pinned
        for _ in range(5):
            pinned = {t: self._open(t) for t in TABLES}
            models = pinned["models"]
            if models is None or models.latest_version == models.version:
                break  # models did not move while layers and filters were opened
        self._pinned = pinned
        return pinned

    def dataset(self, table: str) -> lance.LanceDataset | None:
        """The pinned dataset of models, layers or filters (all rows, hidden ones too), or of another
        table (snapshots, analysis/NAME) at its latest or snapshot version; None when absent."""
        if table in TABLES:
            return self._pin()[table]
        version = (self._snapshot_versions or {}).get(table)
        if self._snapshot_versions is not None and version is None:
            return None
        return self._open(table, version)

    def dataset_at(self, table: str, version: int) -> lance.LanceDataset:
        """A table at one Lance version (e.g. the `db_version` an analysis row records); all rows."""
        ds = self._open(table, version)
        if ds is None:
            latest = self.require(table)
            raise UsageError(f"{self.table_uri(table)} has no version {version} (the latest is {latest.version}; "
                             f"`filterdb vacuum` removes old versions that no snapshot keeps)")
        return ds

    def require(self, table: str) -> lance.LanceDataset:
        ds = self.dataset(table)
        if ds is None:
            hint = "run `filterdb extract CATALOG --db ...` first" if table in TABLES else "run the analysis that writes it first"
            raise UsageError(f"no {table}.lance in the DB at {self.root}: {hint}, or check the path")
        return ds

    def refresh(self) -> FilterDB:
        """Read the latest versions from now on (a snapshot-opened DB stays at its snapshot)."""
        self._pinned = None
        self._visible = None
        self._sql = None
        return self

    def exists(self) -> bool:
        return self.dataset("models") is not None

    def _visibility(self, table: str) -> str | None:
        """The predicate that hides rows of models without an ok models row (None: nothing to hide).
        By the write order, every ok model's rows are present, so equal counts mean no hidden rows."""
        if table not in ("layers", "filters"):
            return None
        if self._visible is None:
            ids, expected = _complete_models(self.dataset("models"))
            visible = {}
            for name in ("layers", "filters"):
                ds = self.dataset(name)
                if ds is None or ds.count_rows() == expected[name]:
                    visible[name] = None
                else:
                    visible[name] = f"model_id IN {sql_list(ids)}" if ids else "false"
            self._visible = visible
        return self._visible[table]

    def _predicate(self, table: str, where: str | None) -> str | None:
        hidden = self._visibility(table)
        if where is not None and not where.strip():
            where = None
        if hidden and where:
            return f"({hidden}) AND ({where})"
        return hidden or where

    # --- reading -------------------------------------------------------------------------------

    def columns(self, table: str) -> list[str]:
        ds = self.dataset(table)
        return ds.schema.names if ds is not None else list(SCHEMAS[table].names) if table in SCHEMAS else []

    def _check_columns(self, table: str, columns: list[str] | None) -> None:
        if columns is None:
            return
        known = self.columns(table)
        unknown = [c for c in columns if c not in known and c not in ("_distance", "_rowid")]
        if unknown:
            raise UsageError(f"{table}: unknown column {', '.join(map(repr, unknown))}; the columns are: {', '.join(known)}")

    def scanner(self, table: str, where: str | None = None, columns: list[str] | None = None, **options) -> lance.LanceScanner:
        """A Lance scanner over the visible rows, predicate and projection pushed into the scan; a bad
        predicate or column raises UsageError naming it."""
        ds = self.require(table)
        self._check_columns(table, columns)
        predicate = self._predicate(table, where)
        try:
            scanner = ds.scanner(columns=columns, filter=predicate, **options)
            scanner.projected_schema  # noqa: B018 - plans the scan, so that a bad predicate fails here
            return scanner
        except Exception as error:  # noqa: BLE001 - Lance raises several types for a bad predicate
            raise predicate_error(where, error, [c for c in ds.schema.names if c != "weights"], option="where") from None

    def _read(self, table: str, where, columns, batch_size=None, **options):
        scanner = self.scanner(table, where, columns, batch_size=batch_size, **options)
        try:
            if batch_size:
                return scanner.to_batches()
            return scanner.to_table()
        except Exception as error:  # noqa: BLE001 - a predicate that only fails while running
            raise predicate_error(where, error, self.columns(table), option="where") from None

    def models(self, where: str | None = None, columns: list[str] | None = None, as_: str = "pandas"):
        """Rows of models.lance (ok and failed; `where="status = 'ok'"` for the complete ones)."""
        if self.dataset("models") is None:
            table = MODELS_SCHEMA.empty_table() if columns is None else MODELS_SCHEMA.empty_table().select(columns)
        else:
            table = self._read("models", where, columns)
        return _as_frame(table, as_)

    def layers(self, where: str | None = None, columns: list[str] | None = None, as_: str = "pandas"):
        """Rows of layers.lance of ok models, as pandas or Arrow."""
        return _as_frame(self._read("layers", where, columns), as_)

    def filters(self, where: str | None = None, columns: list[str] | None = None, as_: str = "numpy",
                batch_size: int | None = None):
        """Filters of ok models matching `where`.

        as_="numpy": with `columns` None the `(N, 3, 3)` float32 weights exactly as stored, else a dict
        of numpy arrays, `weights` as `(N, 3, 3)`; "torch": the same as tensors (strings stay numpy);
        "pandas" or "arrow": a frame or table (weights as 9-lists). With `batch_size`, an iterator of
        such values of at most that many rows each (bounded memory)."""
        if as_ not in AS_KINDS:
            raise UsageError(f"as_={as_!r}: choose one of {', '.join(AS_KINDS)}")
        wanted = columns or (["weights"] if as_ in ("numpy", "torch") else None)
        data = self._read("filters", where, wanted, batch_size=batch_size)
        convert = lambda t: _filters_as(t, as_, columns)  # noqa: E731
        if batch_size:
            return (convert(pa.Table.from_batches([b])) for b in data if b.num_rows)
        return convert(data)

    def iter_filters(self, where: str | None = None, columns: list[str] | None = None, as_: str = "numpy",
                     batch_size: int = 1 << 16) -> Iterator:
        """`filters(...)` as an iterator of batches of at most `batch_size` rows."""
        return self.filters(where, columns, as_, batch_size)

    def count(self, table: str, where: str | None = None) -> int:
        """Visible rows of a table matching `where` (an index serves a predicate on an indexed column)."""
        ds = self.require(table)
        predicate = self._predicate(table, where)
        try:
            return ds.count_rows(filter=predicate)
        except Exception as error:  # noqa: BLE001
            raise predicate_error(where, error, self.columns(table), option="where") from None

    def stored_models(self) -> dict[str, dict]:
        """model_id -> its models row (status, weights_digest, fingerprint), latest version."""
        ds = self.latest_dataset("models")
        if ds is None:
            return {}
        table = ds.to_table(columns=["model_id", "status", "weights_digest", "source_fingerprint"])
        return {row["model_id"]: row for row in table.to_pylist()}

    def ray_dataset(self, table: str, where: str | None = None, columns: list[str] | None = None, **read_options):
        """The visible rows as a Ray Dataset (needs Ray: `flows.ray_data.ray_dataset`)."""
        from flows.ray_data import ray_dataset  # Ray lives in flows/

        return ray_dataset(self, table, where=where, columns=columns, **read_options)

    def read_plan(self, table: str, where: str | None = None) -> dict:
        """What a Ray read of `table` needs: URI, pinned version, pushed-down predicate, storage options."""
        ds = self.require(table)
        return {"uri": self.table_uri(table), "version": ds.version, "filter": self._predicate(table, where),
                "storage_options": self.storage_options}

    # --- SQL and search ------------------------------------------------------------------------

    def sql(self, query: str, as_: str = "pandas"):
        """DuckDB SQL over models, layers, filters (visible rows), snapshots and the analysis tables;
        predicates and projections are pushed into the Lance scans. Results as pandas or Arrow."""
        from ops.query_sql import run_sql

        return run_sql(self, query, as_)

    def sql_connection(self):
        """The DuckDB connection of `sql` (tables registered at this object's versions) and table ->
        columns; made once per pinned state."""
        if self._sql is None:
            from ops.query_sql import connect

            self._sql = connect(self)
        return self._sql

    def similar(self, kernel, k: int = 10, where: str | None = None, sign_invariant: bool = False,
                exact: bool | None = None, prefilter: bool = True, nprobes: int | None = None,
                refine_factor: int | None = None):
        """The `k` stored filters most similar in shape to `kernel` (see `ops.similarity`), as pandas
        with model, layer, indices, depth, weights and `distance`, nearest first."""
        from ops.similarity import search

        return search(self, kernel, k=k, where=where, sign_invariant=sign_invariant, exact=exact,
                      prefilter=prefilter, nprobes=nprobes, refine_factor=refine_factor)

    def analysis_tables(self) -> list[str]:
        """Names of the analysis tables present (analysis/NAME.lance)."""
        if self._snapshot_versions is not None:
            return sorted(t.split("/", 1)[1] for t in self._snapshot_versions if t.startswith(f"{ANALYSIS_FOLDER}/"))
        if _is_local(self.root):
            folder = Path(_local_path(self.root)) / ANALYSIS_FOLDER
            names = sorted(p.name[:-len(".lance")] for p in folder.glob("*.lance")) if folder.is_dir() else []
        else:
            names = list(KNOWN_ANALYSIS_TABLES)
        return [n for n in names if self._open(f"{ANALYSIS_FOLDER}/{n}") is not None]

    # --- writing -------------------------------------------------------------------------------

    def _writable(self) -> None:
        if self.version is not None:
            raise UsageError(f"{self!r} reads snapshot {self.version}: open the DB without version= to write")

    def _make_root(self) -> None:
        if _is_local(self.root):
            Path(_local_path(self.root)).mkdir(parents=True, exist_ok=True)

    def write_fragments(self, table: str, data: pa.Table | None, schema: pa.Schema | None = None) -> list:
        """Write data files for `data` without committing (any process; the driver commits), with the
        columns of `schema` (default: the stored table's, so that a DB written by an earlier filterdb
        gets rows of its own layout; the current schema for a new table)."""
        if data is None or data.num_rows == 0:
            return []
        schema = schema or self._stored_schema(table)
        return lance.fragment.write_fragments(data.select(schema.names).cast(schema), self.table_uri(table), schema=schema,
                                              storage_options=self.storage_options)

    def _stored_schema(self, table: str) -> pa.Schema:
        if table not in self._schemas:
            ds = self.latest_dataset(table)
            self._schemas[table] = ds.schema if ds is not None else SCHEMAS[table]
        return self._schemas[table]

    def commit(self, table: str, fragments: list, schema: pa.Schema | None = None) -> None:
        """Make written fragments visible in one commit; a table that does not exist is created."""
        self._writable()
        if not fragments:
            return
        self._schemas.pop(table, None)
        ds = self.latest_dataset(table)
        if ds is None:
            self._make_root()
            operation = lance.LanceOperation.Overwrite(schema or SCHEMAS[table], fragments)
            lance.LanceDataset.commit(self.table_uri(table), operation, storage_options=self.storage_options)
        else:
            lance.LanceDataset.commit(ds, lance.LanceOperation.Append(fragments), read_version=ds.version,
                                      storage_options=self.storage_options)
        self.refresh()

    def append(self, table: str, data: pa.Table) -> None:
        ds = self.latest_dataset(table)
        schema = ds.schema if ds is not None else SCHEMAS[table]
        self.commit(table, self.write_fragments(table, data, schema), schema)

    def append_models(self, rows: list[ModelsRow]) -> None:
        """Add models rows. Their extra catalog columns become new string columns of `models`, and
        columns added to MODELS_SCHEMA since a DB was created are added to it (null for older rows)."""
        if not rows:
            return
        extra = sorted({name for row in rows for name in row.extra} - set(MODELS_SCHEMA.names))
        wanted = list(MODELS_SCHEMA) + [pa.field(name, pa.string()) for name in extra]
        ds = self.latest_dataset("models")
        if ds is not None:
            new = [f for f in wanted if f.name not in ds.schema.names]
            if new:
                ds.add_columns(new)
                ds = self.latest_dataset("models")
            schema = ds.schema
        else:
            schema = pa.schema(wanted)
        table = pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)
        self.commit("models", self.write_fragments("models", table, schema), schema)

    def update_rows(self, table: str, data: pa.Table, keys: list[str]) -> None:
        """Set the columns of `data` on the stored rows with the same `keys` values, in one commit
        (rows are never rewritten whole: the other columns keep their values)."""
        self._writable()
        ds = self.require(table)
        data = data.cast(pa.schema([ds.schema.field(name) for name in data.column_names]))
        ds.merge_insert(keys).when_matched_update_all().execute(data)
        self.refresh()

    def write_model_files(self, row: ModelsRow, filters: pa.Table | None, layers: pa.Table | None) -> WrittenModel:
        """Write the data files of one extracted model, uncommitted (in whatever process extracted it)."""
        if row["status"] != "ok":
            return WrittenModel(row)
        return WrittenModel(row, self.write_fragments("filters", filters), self.write_fragments("layers", layers))

    def commit_models(self, models: list[WrittenModel], replacing: set[str] | frozenset = frozenset()) -> None:
        """Make written models visible in the order of the module doc: the stored rows of the models in
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
        self._writable()
        model_ids = list(model_ids)
        if not model_ids:
            return
        predicate = f"model_id IN {sql_list(model_ids)}"
        for table in TABLES:
            ds = self.latest_dataset(table)
            if ds is not None:
                ds.delete(predicate)
        self.refresh()

    def recover(self) -> list[str]:
        """Delete rows of models that have no `ok` models row; returns the ids removed."""
        self._writable()
        complete, expected = _complete_models(self.latest_dataset("models"))
        ids = set(complete)
        removed: set[str] = set()
        for table in ("filters", "layers"):
            ds = self.latest_dataset(table)
            if ds is None or ds.count_rows() == expected[table]:
                continue
            present = set(ds.to_table(columns=["model_id"]).column("model_id").unique().to_pylist())
            orphans = present - ids
            if orphans:
                ds.delete(f"model_id IN {sql_list(sorted(orphans))}")
                removed |= orphans
        self.refresh()
        return sorted(removed)

    def compact(self) -> None:
        """Merge the small fragments of many per-model commits into large files, and bring the indexes
        up to date (new scalar indexes created, existing ones extended to appended rows)."""
        self._writable()
        for table in TABLES:
            ds = self.latest_dataset(table)
            if ds is not None and len(ds.get_fragments()) > 1:
                ds.optimize.compact_files()
        self.update_indexes()
        self.refresh()

    def update_indexes(self) -> list[str]:
        """Create the scalar indexes of SCALAR_INDEXES that are missing and add appended rows to every
        index (the vector index too); returns the indexes created."""
        created = []
        for table, wanted in SCALAR_INDEXES.items():
            ds = self.latest_dataset(table)
            if ds is None or ds.count_rows() == 0:
                continue
            indexed = {name for index in ds.describe_indices() for name in index.field_names}
            for column, kind in wanted.items():
                if column in ds.schema.names and column not in indexed:
                    ds.create_scalar_index(column, kind)
                    created.append(f"{table}.{column} ({kind})")
            if indexed:
                ds.optimize.optimize_indices()
        self.refresh()
        return created

    def missing_columns(self, table: str = "filters") -> list[str]:
        """Columns of the current schema that the stored table lacks (a DB written by an earlier
        filterdb); `upgrade()` adds those it can."""
        ds = self.dataset(table)
        return [] if ds is None else [name for name in SCHEMAS[table].names if name not in ds.schema.names]

    def upgrade(self) -> list[str]:
        """Bring a DB written by an earlier filterdb to the current layout; returns what was added.
        filters.lance gets `model_key` (from `model_id`, ops.store.model_key): Lance writes the new
        column's files beside the existing ones, in one commit, without rewriting a filter. Readers of
        earlier versions are not affected; not while another process writes to the DB."""
        self._writable()
        self.recover()
        added = []
        ds = self.latest_dataset("filters")
        if ds is not None and "model_key" not in ds.schema.names:
            ds.add_columns(lambda batch: pa.record_batch([model_keys(batch.column("model_id"))], names=["model_key"]),
                           read_columns=["model_id"])
            added.append("filters.model_key")
        self._schemas.clear()
        self.refresh()
        if added:
            self.snapshot("upgrade", note="added " + ", ".join(added))
        return added

    def create_vector_index(self, num_partitions: int | None = None) -> dict:
        """The IVF index of `filterdb index` over filters.weights (cosine), replacing an older one."""
        self._writable()
        ds = self.latest_dataset("filters")
        if ds is None or ds.count_rows() == 0:
            raise UsageError(f"no filters in the DB at {self.root} to index: run `filterdb extract` first")
        rows = ds.count_rows()
        partitions = num_partitions or max(1, min(4096, rows // VECTOR_INDEX["rows_per_partition"]))
        ds.create_index("weights", VECTOR_INDEX["index_type"], metric=VECTOR_INDEX["metric"],
                        num_partitions=partitions, replace=True)
        self.refresh()
        return {"rows": rows, "partitions": partitions, "index_type": VECTOR_INDEX["index_type"]}

    def has_vector_index(self) -> bool:
        ds = self.dataset("filters")
        return ds is not None and any(i.field_names == ["weights"] for i in ds.describe_indices())

    def write_analysis(self, name: str, table: pa.Table, replace: dict | None = None) -> str:
        """Write an analysis table (analysis/NAME.lance) in one commit: `table`'s rows in place of the
        stored rows whose columns equal `replace` (a dict column -> value; None keeps every stored
        row). Stored rows get the columns they lack as nulls and are cast to `table`'s types, so an
        older analysis table takes new columns. Returns the table's URI."""
        self._writable()
        uri = self.analysis_uri(name)
        ds = self._open(f"{ANALYSIS_FOLDER}/{name}")
        if ds is None:
            if _is_local(self.root):
                Path(_local_path(self.root), ANALYSIS_FOLDER).mkdir(parents=True, exist_ok=True)
            lance.write_dataset(table, uri, storage_options=self.storage_options)
            return uri
        stored = ds.to_table()
        same = np.zeros(stored.num_rows, bool) if not replace else np.ones(stored.num_rows, bool)
        for column, value in (replace or {}).items():
            if column not in stored.schema.names:
                same[:] = False
                break
            same &= pc.fill_null(pc.equal(stored.column(column), value), False).to_numpy(zero_copy_only=False)
        kept = stored.filter(pa.array(~same))
        schema = pa.schema([*table.schema, *(f for f in stored.schema if f.name not in table.schema.names)])
        parts = [pa.table({f.name: (t.column(f.name).cast(f.type) if f.name in t.schema.names else pa.nulls(t.num_rows, f.type))
                           for f in schema}, schema=schema) for t in (kept, table)]
        lance.write_dataset(pa.concat_tables(parts), uri, mode="overwrite", storage_options=self.storage_options)
        return uri

    def read_analysis(self, name: str, where: str | None = None, as_: str = "arrow"):
        """An analysis table (analysis/NAME.lance) at this DB's version; None when absent."""
        ds = self.dataset(f"{ANALYSIS_FOLDER}/{name}")
        if ds is None:
            return None
        try:
            table = ds.to_table(filter=where)
        except Exception as error:  # noqa: BLE001
            raise predicate_error(where, error, ds.schema.names, option="where") from None
        return _as_frame(table, as_)

    # --- snapshots -----------------------------------------------------------------------------

    def snapshot(self, kind: str, models_added: int = 0, models_removed: int = 0, models_failed: int = 0,
                 note: str = "") -> int:
        """Record the current versions of every table as snapshot N (returned), tag those versions
        `snapshot-N` (so that `vacuum` keeps them) and add a row to snapshots.lance."""
        self._writable()
        self.refresh()
        tables = [*TABLES, *(f"{ANALYSIS_FOLDER}/{n}" for n in self.analysis_tables())]
        datasets = {t: self.latest_dataset(t) for t in tables}
        datasets = {t: ds for t, ds in datasets.items() if ds is not None}
        previous = self.latest_dataset(SNAPSHOTS_TABLE)
        number = 1 + (max(previous.to_table(columns=["snapshot"]).column("snapshot").to_pylist(), default=0)
                      if previous is not None else 0)
        for ds in datasets.values():
            ds.tags.create(f"snapshot-{number}", ds.version)
        ok = self.count_models("ok")
        row = {
            "snapshot": number, "created_at": datetime.datetime.now(datetime.timezone.utc), "kind": kind, "note": note,
            "models_added": models_added, "models_removed": models_removed, "models_failed": models_failed,
            "models_ok": ok, **{f"rows_{t}": datasets[t].count_rows() if t in datasets else 0 for t in TABLES},
            "versions": json.dumps({t: ds.version for t, ds in datasets.items()}),
        }
        data = pa.Table.from_pylist([row], schema=SNAPSHOTS_SCHEMA)
        if previous is None:
            self._make_root()
            lance.write_dataset(data, self.table_uri(SNAPSHOTS_TABLE), storage_options=self.storage_options)
        else:
            lance.write_dataset(data, self.table_uri(SNAPSHOTS_TABLE), mode="append", storage_options=self.storage_options)
        self.refresh()
        return number

    def count_models(self, status: str) -> int:
        ds = self.dataset("models")
        return 0 if ds is None else ds.count_rows(filter=f"status = {sql_list([status])[1:-1]}")

    def snapshots(self, as_: str = "pandas"):
        """Every snapshot: number, time, kind, models added/removed/failed/ok, rows per table, versions."""
        ds = self._open(SNAPSHOTS_TABLE)
        table = SNAPSHOTS_SCHEMA.empty_table() if ds is None else ds.to_table().sort_by("snapshot")
        return _as_frame(table, as_)

    def _versions_of_snapshot(self, number: int) -> dict[str, int]:
        ds = self._open(SNAPSHOTS_TABLE)
        rows = [] if ds is None else ds.to_table(filter=f"snapshot = {int(number)}").to_pylist()
        if not rows:
            have = [] if ds is None else sorted(ds.to_table(columns=["snapshot"]).column("snapshot").to_pylist())
            raise UsageError(f"no snapshot {number} in the DB at {self.root}; "
                             + (f"it has snapshots {', '.join(map(str, have))}" if have else "it has none (`filterdb info` lists them)"))
        return json.loads(rows[0]["versions"])

    def vacuum(self, keep: int | None = None) -> dict:
        """Forget all but the newest `keep` snapshots (None: keep all), then delete every table version
        that is neither the latest nor a kept snapshot's, and the data files no version references
        (those an interrupted run left). Not while another process writes to the DB."""
        self._writable()
        removed_snapshots = []
        snapshots = self.latest_dataset(SNAPSHOTS_TABLE)
        if keep is not None and snapshots is not None:
            numbers = sorted(snapshots.to_table(columns=["snapshot"]).column("snapshot").to_pylist())
            removed_snapshots = numbers[:-keep] if keep > 0 else numbers
            if removed_snapshots:
                for table in [*TABLES, *(f"{ANALYSIS_FOLDER}/{n}" for n in self.analysis_tables())]:
                    ds = self.latest_dataset(table)
                    if ds is None:
                        continue
                    for number in removed_snapshots:
                        if f"snapshot-{number}" in ds.tags.list():
                            ds.tags.delete(f"snapshot-{number}")
                snapshots.delete(f"snapshot IN ({', '.join(map(str, removed_snapshots))})")
        freed, versions = 0, 0
        for table in [*TABLES, SNAPSHOTS_TABLE, *(f"{ANALYSIS_FOLDER}/{n}" for n in self.analysis_tables())]:
            ds = self.latest_dataset(table)
            if ds is None:
                continue
            stats = ds.cleanup_old_versions(older_than=datetime.timedelta(0), delete_unverified=True,
                                            error_if_tagged_old_versions=False)
            freed += stats.bytes_removed
            versions += stats.old_versions
        self.refresh()
        return {"snapshots_removed": removed_snapshots, "versions_removed": versions, "bytes_removed": freed}

    # --- description ---------------------------------------------------------------------------

    def info(self) -> dict:
        """Tables (rows, version, fragments, size of the current version, indexes), models ok and
        failed, and the snapshots."""
        tables = {}
        for table in [*TABLES, *(f"{ANALYSIS_FOLDER}/{n}" for n in self.analysis_tables()), SNAPSHOTS_TABLE]:
            ds = self.dataset(table)
            if ds is None:
                continue
            metadata = next((v.get("metadata") or {} for v in ds.versions() if v["version"] == ds.version), {})
            size = int(metadata.get("total_files_size", 0) or 0)
            tables[table] = {
                "rows": ds.count_rows(), "visible_rows": self.count(table) if table in ("layers", "filters") else None,
                "version": ds.version, "fragments": len(ds.get_fragments()), "bytes": size or None,
                "indexes": [f"{','.join(i.field_names)} ({_index_kind(i.type_url)})"
                            for i in ds.describe_indices()],
            }
        return {"root": self.root, "version": self.version, "tables": tables,
                "models_ok": self.count_models("ok"), "models_failed": self.count_models("failed"),
                "snapshots": self.snapshots()}


# --- result conversions -----------------------------------------------------------------------------


def _as_frame(table: pa.Table, as_: str):
    if as_ == "arrow":
        return table
    if as_ == "pandas":
        return table.to_pandas()
    raise UsageError(f"as_={as_!r}: choose pandas or arrow")


def weights_of(column) -> np.ndarray:
    """A `weights` column (fixed_size_list<float32, 9>) as an `(N, 3, 3)` float32 array, zero-copy
    where Arrow allows, values bit for bit."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(column) == 0:
        return np.empty((0, 3, 3), np.float32)
    values = column.flatten() if column.offset else column.values
    return values.to_numpy(zero_copy_only=False).reshape(-1, 3, 3)


def _filters_as(table: pa.Table, as_: str, columns: list[str] | None):
    if as_ == "arrow":
        return table
    if as_ == "pandas":
        return table.to_pandas()
    arrays = {name: (weights_of(table.column(name)) if name == "weights" else table.column(name).to_numpy(zero_copy_only=False))
              for name in table.column_names}
    if as_ == "torch":
        import torch

        arrays = {name: torch.from_numpy(np.array(a)) if a.dtype.kind in "fiub" else a for name, a in arrays.items()}
    return arrays["weights"] if columns is None else arrays
