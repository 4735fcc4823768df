"""What the report reads from a DB, none of it the whole filters table: a summary of the models and
layers tables (`db_summary`), shift analyses stored under DIR/analysis/ (`stored_shift_result`), and
bounded samples of filters (`sample_filters`: one pass over the small columns, then a Lance `take` of
the sampled rows' weights only). Ray-free.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ops.db import open_db
from ops.shifts import (
    DEFAULT_BINS,
    DEPTH_AXIS,
    GLOBAL_RANGE,
    MISSING,
    N_COMPONENTS,
    CoefficientRange,
    Histograms,
    ShiftResult,
    default_sort,
    load_basis,
    resolve_axis,
    weights_array,
)
from ops.shifts.selection import as_db

SUMMARY_COLUMNS = ("family", "task", "visual_category")
"""Columns of models.lance the summary counts models by."""
SAMPLE_BATCH_ROWS = 1 << 18


# --- the DB summary --------------------------------------------------------------------------------


@dataclass
class DBSummary:
    """Counts of a DB: models by status and meta-parameter, failed models with their errors, rows and
    versions of the three tables."""

    path: str
    versions: dict[str, int | None]
    rows: dict[str, int]
    models_ok: int
    counts: dict[str, list[tuple[str, int]]]
    failed: list[tuple[str, str]] = field(default_factory=list)


def db_summary(db: str) -> DBSummary:
    """Reads models.lance whole (one row per model) and only the row counts of the other tables
    (the rows of complete models, as every reader of `ops.db` sees them)."""
    store = open_db(db, must_exist=False)
    versions, rows = {}, {}
    for table in ("models", "layers", "filters"):
        dataset = store.dataset(table)
        versions[table] = dataset.version if dataset is not None else None
        rows[table] = store.count(table) if dataset is not None else 0
    models = store.models(as_="arrow")
    ok = models.filter(pc.equal(models.column("status"), "ok"))
    counts = {}
    for column in SUMMARY_COLUMNS:
        if column in ok.column_names:
            values = Counter(MISSING if v is None else str(v) for v in ok.column(column).to_pylist())
            counts[column] = sorted(values.items(), key=lambda item: (-item[1], item[0]))
    failed = [(row["model_id"], row["error"] or "") for row in models.to_pylist() if row["status"] != "ok"]
    return DBSummary(store.root, versions, rows, ok.num_rows, counts, failed)


# --- stored shift analyses -------------------------------------------------------------------------


def _sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _depth_key(label: str) -> tuple[float, str]:
    """'[0.0, 0.1]' -> 0.0, '(0.1, 0.2]' -> 0.1: depth bins in order, (missing) last."""
    found = re.match(r"[\[(]([-\d.]+),", label)
    return (float(found.group(1)) if found else np.inf, label)


def stored_shift_result(db: str, axis: str, selection: str | None, version: int, bins: int = DEFAULT_BINS,
                        range_mode: str = GLOBAL_RANGE) -> ShiftResult | None:
    """The shift analysis along `axis` over `selection` (the predicate as `ops.shifts.select_filters`
    gives it) with these `bins` and `range_mode`, stored under DIR/analysis/ for this version of
    filters.lance, as a `ShiftResult` with the stored numbers, groups in the study's order
    (`ops.shifts.default_sort`); None when there is none (or only one of an older version or recipe)."""
    store = as_db(db)
    tables = [store.dataset(f"analysis/{name}") for name in ("basis", "histograms", "shifts")]
    if any(t is None for t in tables):
        return None
    if any(not {"range_mode", "bins"} <= set(t.schema.names) for t in tables[1:]):
        return None  # written before the recipe was recorded: not comparable
    key = (f"axis = {_sql_string(axis)} AND selection = {_sql_string(selection or '')} AND db_version = {int(version)} "
           f"AND range_mode = {_sql_string(range_mode)} AND bins = {int(bins)}")
    histograms, shifts = (table.to_table(filter=key) for table in tables[1:])  # the datasets opened above
    if histograms.num_rows == 0:
        return None
    basis_selection = histograms.column("basis_selection")[0].as_py()
    stored = load_basis(store, basis_selection)
    rows = histograms.sort_by([("group", "ascending"), ("component", "ascending")]).to_pylist()
    groups = sorted({r["group"] for r in rows}, key=_depth_key if axis == DEPTH_AXIS else None)
    counts = {g: np.zeros((N_COMPONENTS, bins), np.int64) for g in groups}  # the rows read are those of `bins`
    lo, hi = np.zeros(N_COMPONENTS), np.zeros(N_COMPONENTS)
    for r in rows:
        counts[r["group"]][r["component"]] = r["counts"]
        lo[r["component"]], hi[r["component"]] = r["lo"], r["hi"]
    position = {g: i for i, g in enumerate(groups)}
    kl = np.zeros((len(groups), len(groups), N_COMPONENTS))
    weighted = np.zeros((len(groups), len(groups)))
    for r in shifts.to_pylist():
        a, b = position[r["group_a"]], position[r["group_b"]]
        kl[a, b] = kl[b, a] = r["kl"]
        weighted[a, b] = weighted[b, a] = r["kl_weighted"]
    return ShiftResult(
        axis=axis,
        groups=groups,
        sizes=np.array([counts[g][0].sum() for g in groups], np.int64),
        basis=stored.basis,
        value_range=CoefficientRange(stored.value_range.lo, stored.value_range.hi),
        histograms=Histograms(lo, hi, bins, counts, range_mode),
        kl=kl,
        kl_weighted=weighted,
        selection=selection,
        basis_selection=basis_selection,
        db_version=version,
    ).sorted(default_sort(axis == DEPTH_AXIS))


# --- bounded samples of filters ----------------------------------------------------------------------


@dataclass
class FilterSample:
    """Sampled filters of a selection: `weights` (n, 9) as stored, drawn uniformly from the selection,
    and per axis, per group, up to `per_group` filters of that group (`groups[axis][label]`)."""

    weights: np.ndarray
    groups: dict[str, dict[str, np.ndarray]]
    selected: int


def sample_filters(db: str, selection: str | None, version: int, axes: list[str], n: int = 100_000,
                   per_group: int = 12, seed: int = 0) -> FilterSample:
    """Up to `n` filters drawn uniformly from the rows of filters.lance (at `version`) matching
    `selection`, and up to `per_group` of every group of each axis, chosen at random (seeded).

    One pass reads the predicate's value and the axes' columns of every row (never `weights`), batch
    by batch, keeping only the chosen rows' positions; one `take` then reads those rows' weights."""
    store = as_db(db)
    filters = store.dataset_at("filters", version)
    resolved = {name: resolve_axis(store, name) for name in axes}
    columns = {"selected": selection or "true"}
    for axis in resolved.values():
        columns[axis.column] = axis.column
    rng = np.random.default_rng(seed)
    chosen = {name: {} for name in axes}  # axis -> label -> (keys, positions): the per_group smallest keys
    uniform_keys, uniform_positions, start, selected = np.empty(0), np.empty(0, np.int64), 0, 0
    for batch in filters.scanner(columns=columns, batch_size=SAMPLE_BATCH_ROWS).to_batches():
        mask = pc.fill_null(batch.column("selected"), False).to_numpy(zero_copy_only=False)
        positions = np.flatnonzero(mask)
        keys = rng.random(len(positions))
        selected += len(positions)
        # the rows of the n smallest keys so far: a uniform sample of every selected row seen
        keys_so_far, positions_so_far = np.concatenate([uniform_keys, keys]), np.concatenate([uniform_positions, positions + start])
        keep = np.argpartition(keys_so_far, n)[:n] if len(keys_so_far) > n else slice(None)
        uniform_keys, uniform_positions = keys_so_far[keep], positions_so_far[keep]
        if len(positions):
            picked = pa.Table.from_batches([batch]).take(pa.array(positions))
            for name, axis in resolved.items():
                codes, labels = axis.codes(picked)
                _keep_smallest(chosen[name], codes, labels, keys, positions + start, per_group)
        start += batch.num_rows
    per_axis = {name: {label: p for label, (_, p) in groups.items()} for name, groups in chosen.items()}
    wanted = np.unique(np.concatenate([uniform_positions, *[p for groups in per_axis.values() for p in groups.values()]]))
    weights = weights_array(filters.take(pa.array(wanted), columns=["weights"]).column("weights")) if len(wanted) else np.empty((0, N_COMPONENTS), np.float32)

    def rows_of(positions: np.ndarray) -> np.ndarray:
        return weights[np.searchsorted(wanted, positions)]

    ordered = {name: {label: rows_of(np.sort(p)) for label, p in _ordered(name, groups).items()} for name, groups in per_axis.items()}
    return FilterSample(rows_of(np.sort(uniform_positions)), ordered, selected)


def _keep_smallest(chosen: dict, codes: np.ndarray, labels: list[str], keys: np.ndarray, positions: np.ndarray, k: int) -> None:
    """Merge a batch's rows into `chosen` (label -> (keys, positions)), keeping each label's k smallest keys."""
    for code in np.unique(codes):
        members = codes == code
        label = labels[code]
        old_keys, old_positions = chosen.get(label, (np.empty(0), np.empty(0, np.int64)))
        all_keys = np.concatenate([old_keys, keys[members]])
        all_positions = np.concatenate([old_positions, positions[members]])
        best = np.argsort(all_keys)[:k]
        chosen[label] = (all_keys[best], all_positions[best])


def _ordered(axis: str, groups: dict) -> dict:
    return dict(sorted(groups.items(), key=lambda item: _depth_key(item[0]) if axis == DEPTH_AXIS else (item[0] == MISSING, item[0])))
