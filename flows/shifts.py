"""`filterdb shifts`: distribution shift of filters between groups of models, distributed with Ray Data.

    filters.lance --read_lance(weights, axis column; filter)--> map_batches: peak-scale, group codes
        --> materialize: the scaled filters stay in Ray's object store, read and scaled once
    step 1  a task per block -> Moments           -> Basis              (skipped with a stored basis)
    step 2  a task per block -> CoefficientRange  -> global min / max   (skipped with a stored basis)
    step 3  a task per block -> Histograms        -> symmetric KL of every pair of groups

Filter rows are never shuffled nor collected: every task yields one small aggregate, folded on the
driver as it arrives. A selection too large for the object store (CACHE_SHARE of it) is read from
filters.lance once per step instead (`map_batches` of the same aggregates over the Lance read), and
memory then does not depend on the number of filters. All steps read the same version of
filters.lance, and the tables written under DIR/analysis/ (basis, histograms, shifts) carry it as
`db_version`.
"""

from __future__ import annotations

import functools
import os
import pickle
import re
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.ray_runtime import ensure_ray
from ops.errors import UsageError
from ops.predicates import predicate_error
from ops.store import FILTERS_SCHEMA
from ops.shifts import (
    DEFAULT_BINS,
    DEFAULT_DEPTH_BINS,
    N_COMPONENTS,
    Basis,
    CoefficientRange,
    Histograms,
    Moments,
    ShiftResult,
    block_chunks,
    block_groups,
    depth_codes,
    depth_labels,
    group_codes,
    scaled_block,
    weights_array,
)

DEFAULT_SELECTION = "kind != 'transposed'"
"""The study analysed Conv layers only; transposed layers are stored but left out unless a predicate
names `kind`."""
DEPTH_AXIS = "depth"
BATCH_ROWS = 1 << 17
TASKS_PER_CPU = 4
ROWS_PER_TASK = 1 << 20


CACHE_SHARE = 0.25
"""Largest share of the cluster's object store the peak-scaled filters may take to be kept between
steps; a larger selection is read from filters.lance once per step. Measured on 7 GB: keeping
1.5 GB (21%) made the flow 1.3x faster, keeping 3.8 GB (54%) 1.3x slower (Ray Data throttles the
read that fills the store)."""
CACHED_BYTES_PER_FILTER = 4 * N_COMPONENTS + 4


class ShiftInputError(UsageError):
    """Bad input to a shift analysis (DB, axis, predicate, basis), with what to do about it."""


# --- input validation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Axis:
    """How a block's rows get their group: a filters column, conv_depth_norm bins, or a models.lance
    column looked up through model_id."""

    name: str
    column: str
    mapping: dict | None = None
    depth_bins: int = DEFAULT_DEPTH_BINS

    def codes(self, table: pa.Table) -> tuple[np.ndarray, list[str]]:
        if self.name == DEPTH_AXIS:
            return depth_codes(table.column(self.column).to_numpy(), self.depth_bins)
        return group_codes(table.column(self.column), self.mapping)

    def order(self) -> list[str] | None:
        return depth_labels(self.depth_bins) if self.name == DEPTH_AXIS else None


def resolve_axis(db: Path, by: str, depth_bins: int = DEFAULT_DEPTH_BINS) -> Axis:
    if by == DEPTH_AXIS:
        return Axis(by, "conv_depth_norm", depth_bins=depth_bins)
    if by in FILTERS_SCHEMA.names and by != "weights":
        return Axis(by, by)
    models = db / "models.lance"
    model_columns = lance.dataset(str(models)).schema.names if models.exists() else []
    if by in model_columns and by != "model_id":
        table = lance.dataset(str(models)).to_table(columns=["model_id", by], filter="status = 'ok'")
        mapping = dict(zip(table.column("model_id").to_pylist(), table.column(by).to_pylist()))
        return Axis(by, "model_id", mapping=mapping)
    choices = [DEPTH_AXIS, *[c for c in FILTERS_SCHEMA.names if c != "weights"], *[c for c in model_columns if c not in FILTERS_SCHEMA.names]]
    raise ShiftInputError(f"unknown axis {by!r}: choose one of {', '.join(choices)}")


def selection_predicate(where: str | None, has_transposed: bool = True) -> str | None:
    """The SQL predicate of the analysed filters: `where`, and kind != 'transposed' unless `where`
    names the kind column (or the DB has no transposed filters, where it selects everything anyway)."""
    if where is not None and not where.strip():
        where = None
    if where is not None and re.search(r"\bkind\b", where):
        return where
    if not has_transposed:
        return where
    return DEFAULT_SELECTION if where is None else f"({where}) AND {DEFAULT_SELECTION}"


def _has_transposed(db: Path, filters: lance.LanceDataset) -> bool:
    # layers.lance, one row per layer, says it cheaply; filters.lance needs a scan of its kind column.
    layers = db / "layers.lance"
    if layers.exists():
        try:
            return lance.dataset(str(layers)).count_rows(filter="kind = 'transposed'") > 0
        except Exception:  # noqa: BLE001 - an unreadable layers table: ask the filters
            pass
    return filters.count_rows(filter="kind = 'transposed'") > 0


def _check_selection(filters: lance.LanceDataset, predicate: str | None, where: str | None) -> None:
    try:
        found = filters.scanner(columns=["kind"], filter=predicate, limit=1).to_table().num_rows
    except Exception as error:  # noqa: BLE001 - Lance raises several types for a bad predicate
        raise predicate_error(where, error, [c for c in filters.schema.names if c != "weights"]) from None
    if found == 0:
        raise ShiftInputError(f"no filters match {predicate or 'all filters'!r} in {filters.uri}: relax --where or check the DB")


# --- stored bases ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredBasis:
    basis: Basis
    value_range: CoefficientRange
    selection: str
    db_version: int


def load_basis(source: str | os.PathLike, selection: str | None = None) -> StoredBasis:
    """A basis and its coefficient range from a basis.lance table (or a DB folder holding
    analysis/basis.lance), the one computed over `selection` (default: the only one stored, or else
    the one over the whole default selection)."""
    path = Path(source)
    if (path / "analysis" / "basis.lance").exists():
        path = path / "analysis" / "basis.lance"
    try:
        table = lance.dataset(str(path)).to_table()
    except Exception:  # noqa: BLE001 - not a Lance dataset
        raise ShiftInputError(f"no stored basis at {source}: give a DB folder with analysis/basis.lance (written by an earlier `filterdb shifts`) or a basis.lance path") from None
    stored = sorted(set(table.column("selection").to_pylist()))
    if selection is None:
        whole = [s for s in stored if s in ("", DEFAULT_SELECTION)]  # "": a DB without transposed layers
        selection = stored[0] if len(stored) == 1 else whole[0] if whole else DEFAULT_SELECTION
    if selection not in stored:
        raise ShiftInputError(f"{path} holds no basis computed over {selection!r}; it has: {stored}")
    rows = table.filter(pc.equal(table.column("selection"), selection)).sort_by("component")
    basis = Basis(
        mean=weights_array(rows.column("mean"))[0].copy(),
        components=weights_array(rows.column("vector")).copy(),
        explained_variance=rows.column("explained_variance").to_numpy(),
        explained_variance_ratio=rows.column("explained_variance_ratio").to_numpy(),
        n=int(rows.column("n")[0].as_py()),
    )
    value_range = CoefficientRange(rows.column("coefficient_min").to_numpy().astype(np.float32), rows.column("coefficient_max").to_numpy().astype(np.float32))
    return StoredBasis(basis, value_range, selection, int(rows.column("db_version")[0].as_py()))


def _stored_for(db: Path, selection: str | None, version: int) -> StoredBasis | None:
    """The basis stored for exactly this selection of this version of the DB, if any: the same data,
    hence the same numbers, without two passes."""
    try:
        stored = load_basis(db / "analysis" / "basis.lance", selection or "")
    except ShiftInputError:
        return None
    return stored if stored.db_version == version else None


# --- the flow --------------------------------------------------------------------------------------


def _partial(aggregate) -> pa.Table:
    return pa.table({"partial": pa.array([pickle.dumps(aggregate, protocol=5)], pa.binary())})


def _over_batches(table: pa.Table, initial, of_batch) -> pa.Table:
    # Record batch by record batch: a block's batches as they came from Lance, without concatenating.
    result = initial
    for batch in table.to_batches():
        if batch.num_rows:
            result = result.merge(of_batch(batch))
    return _partial(result)


def _moments_of_block(table: pa.Table) -> pa.Table:
    return _over_batches(table, Moments(), lambda b: Moments.of(weights_array(b.column("weights"))))


def _range_of_block(table: pa.Table, basis: Basis) -> pa.Table:
    return _over_batches(table, CoefficientRange(), lambda b: CoefficientRange.of(weights_array(b.column("weights")), basis))


def _histograms_of_block(table: pa.Table, axis: Axis, basis: Basis, value_range: CoefficientRange, bins: int) -> pa.Table:
    def of_batch(batch):
        codes, labels = axis.codes(batch)
        return Histograms.of(weights_array(batch.column("weights")), codes, labels, basis, value_range, bins)

    return _over_batches(table, Histograms.empty(value_range, bins), of_batch)


def _scaled_block_of(table: pa.Table, axis: Axis) -> pa.Table:
    """A block read from filters.lance as the flow keeps it: peak-scaled, columns of floats, group codes."""
    parts = [scaled_block(weights_array(b.column("weights")), *axis.codes(b)) for b in table.to_batches() if b.num_rows]
    return pa.concat_tables(parts) if parts else scaled_block(np.empty((0, N_COMPONENTS), np.float32), [], [])


def _moments_of_scaled(block: pa.Table) -> Moments:
    return Moments.of_chunks(block_chunks(block))


def _range_of_scaled(block: pa.Table, basis: Basis) -> CoefficientRange:
    return CoefficientRange.of_chunks(block_chunks(block), basis)


def _histograms_of_scaled(block: pa.Table, basis: Basis, value_range: CoefficientRange, bins: int) -> Histograms:
    codes, labels = block_groups(block)
    return Histograms.of_chunks(block_chunks(block), codes, labels, basis, value_range, bins)


@functools.cache
def _block_task():
    import ray

    # A read task whose fragments the predicate empties yields a block without rows and without
    # columns, which map_batches passes on without calling its function: such a block adds nothing.
    return ray.remote(num_cpus=1)(lambda block_fn, block, kwargs: block_fn(block, **kwargs) if block.num_rows else None)


def _fold_blocks(blocks: list, block_fn, initial, concurrency: int | None = None, **kwargs):
    """block_fn(block) as one Ray task per block in the object store (scheduled where the block is),
    at most `concurrency` at a time, the results merged on the driver as they come. Plain tasks: a
    Ray Data pass over materialized blocks costs 0.1-0.2 s more of planning and scheduling."""
    import ray

    limit = concurrency or len(blocks)
    result, waiting, running = initial, list(blocks), []
    while waiting or running:
        while waiting and len(running) < limit:
            running.append(_block_task().remote(block_fn, waiting.pop(), kwargs))
        done, running = ray.wait(running, num_returns=1)
        partial = ray.get(done[0])
        result = result if partial is None else result.merge(partial)
    return result


def _fold(dataset, block_fn, initial, concurrency: int | None = None, **kwargs):
    """map_batches(block_fn) over whole blocks, partial aggregates merged on the driver as they come.
    `concurrency` must be the read's too: read and map fuse into one task only when they agree,
    otherwise every block travels through the object store."""
    result = initial
    partials = dataset.map_batches(block_fn, batch_format="pyarrow", batch_size=None, concurrency=concurrency, fn_kwargs=kwargs)
    for batch in partials.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=0):
        for blob in batch.column("partial").to_pylist():
            result = result.merge(pickle.loads(blob))
    return result


class _Clock:
    """Runs steps, recording their wall time in seconds into `timings` (if given)."""

    def __init__(self, timings: dict | None):
        self.timings = timings

    def __call__(self, step: str, fn):
        start = time.perf_counter()
        result = fn()
        if self.timings is not None:
            self.timings[step] = time.perf_counter() - start
        return result


@contextmanager
def _data_context(progress: bool):
    """Ray Data settings of the passes, restored afterwards. Each pass is one fused operator (read +
    aggregate) whose outputs are a few KB: the share of resources Ray Data otherwise reserves for
    downstream operators only halves the parallelism (one task at a time on 2 CPUs)."""
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.op_resource_reservation_enabled
    context.enable_progress_bars, context.op_resource_reservation_enabled = progress, False
    try:
        yield
    finally:
        context.enable_progress_bars, context.op_resource_reservation_enabled = saved


def run_shifts(
    db: str | os.PathLike,
    by: str,
    where: str | None = None,
    basis: str | os.PathLike | None = None,
    bins: int = DEFAULT_BINS,
    depth_bins: int = DEFAULT_DEPTH_BINS,
    address: str | None = None,
    basis_selection: str | None = None,
    write: bool = True,
    reuse: bool = True,
    concurrency: int | None = None,
    batch_rows: int = BATCH_ROWS,
    progress: bool = True,
    cache: bool | None = None,
    timings: dict | None = None,
) -> ShiftResult:
    """Shift analysis of the filters in `db` between the groups of `by` (a filters.lance column,
    'depth', or a models.lance column), over the filters matching `where` (SQL; transposed layers are
    left out unless it names `kind`). `basis` reuses the basis and coefficient range stored in a DB
    folder / basis.lance so that analyses of subsets stay comparable (`basis_selection` picks one
    of several stored there); without it, a basis stored for
    the same selection of the same DB version is reused (`reuse`), which skips passes 1 and 2. Writes
    DIR/analysis/ tables unless write=False. `concurrency` caps the parallel read+aggregate tasks.

    `cache`: read filters.lance once and keep the peak-scaled filters in Ray's object store for the
    three steps (True), or read it once per step (False); by default, cache when the selection takes
    at most CACHE_SHARE of the cluster's object store. `timings` receives each step's seconds."""
    db = Path(db)
    uri = db / "filters.lance"
    if not uri.exists():
        raise ShiftInputError(f"no filters.lance in {db}: run `filterdb extract` first or check --db")
    if bins < 2 or depth_bins < 1:
        raise ShiftInputError(f"bins must be at least 2 and depth bins at least 1, not {bins} and {depth_bins}")
    filters = lance.dataset(str(uri))
    version = filters.version
    axis = resolve_axis(db, by, depth_bins)
    predicate = selection_predicate(where, has_transposed=_has_transposed(db, filters))
    _check_selection(filters, predicate, where)
    stored = load_basis(basis, basis_selection) if basis is not None else _stored_for(db, predicate, version) if reuse else None

    import ray

    ensure_ray(address)

    # Read tasks of whole fragments, at least a few per CPU and about ROWS_PER_TASK filters each (a
    # worker's memory then does not grow with the DB), each task's rows passed on as whole blocks:
    # Ray's default cuts blocks into pieces of a few thousand rows, where per-block overhead dominates.
    cpus = int(ray.cluster_resources().get("CPU", 1))
    fragments = filters.get_fragments()
    rows = sum(f.count_rows() for f in fragments)
    n_tasks = max(1, min(len(fragments), max(TASKS_PER_CPU * cpus, -(-rows // ROWS_PER_TASK))))

    def read(columns):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # `filter=` is the push-down we want
            return ray.data.read_lance(
                str(uri), version=version, columns=columns, filter=predicate, scanner_options={"batch_size": batch_rows},
                override_num_blocks=n_tasks, concurrency=concurrency,
            )

    if cache is None:
        cache = rows * CACHED_BYTES_PER_FILTER <= CACHE_SHARE * ray.cluster_resources().get("object_store_memory", 0)
    clock, histograms, basis_selection = _Clock(timings), None, predicate
    with _data_context(progress):
        if stored is not None:
            found, value_range, basis_selection = stored.basis, stored.value_range, stored.selection
        elif cache:
            # Each step needs the previous one's result: read and scale the filters once, keep them in
            # the object store, and run the three steps over those blocks.
            scaled = read(["weights", axis.column]).map_batches(_scaled_block_of, batch_format="pyarrow", batch_size=None, concurrency=concurrency, fn_kwargs={"axis": axis})
            blocks = clock("read", lambda: scaled.materialize().to_arrow_refs())
            found = clock("moments", lambda: _fold_blocks(blocks, _moments_of_scaled, Moments(), concurrency).basis())
            value_range = clock("range", lambda: _fold_blocks(blocks, _range_of_scaled, CoefficientRange(), concurrency, basis=found))
            histograms = clock("histograms", lambda: _fold_blocks(blocks, _histograms_of_scaled, Histograms.empty(value_range, bins), concurrency, basis=found, value_range=value_range, bins=bins))
            del blocks
        else:
            found = clock("moments", lambda: _fold(read(["weights"]), _moments_of_block, Moments(), concurrency).basis())
            value_range = clock("range", lambda: _fold(read(["weights"]), _range_of_block, CoefficientRange(), concurrency, basis=found))
        if histograms is None:
            histograms = clock("histograms", lambda: _fold(read(["weights", axis.column]), _histograms_of_block, Histograms.empty(value_range, bins), concurrency, axis=axis, basis=found, value_range=value_range, bins=bins))
    if not histograms.counts:
        raise ShiftInputError(f"no filters match {predicate!r} in {uri}")
    result = ShiftResult.of(by, found, value_range, histograms, order=axis.order(), selection=predicate, basis_selection=basis_selection, db_version=version)
    if write:
        write_analysis(db, result, write_basis=stored is None)
    return result


# --- analysis tables -------------------------------------------------------------------------------


def _vectors(rows: np.ndarray, value_type=pa.float32()) -> pa.FixedSizeListArray:
    rows = np.asarray(rows)
    return pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1), value_type), rows.shape[1])


def _sql_string(value: str | None) -> str:
    return "NULL" if value is None else "'" + value.replace("'", "''") + "'"


def _replace_rows(path: Path, table: pa.Table, key: str) -> None:
    """Write `table` to the Lance dataset at `path`, replacing the rows that match `key` (SQL)."""
    if path.exists():
        dataset = lance.dataset(str(path))
        dataset.delete(key)
        lance.write_dataset(table, str(path), mode="append")
    else:
        lance.write_dataset(table, str(path))


def basis_table(result: ShiftResult) -> pa.Table:
    b, k = result.basis, np.arange(N_COMPONENTS)
    return pa.table(
        {
            "selection": pa.array([result.selection or ""] * N_COMPONENTS, pa.string()),
            "db_version": pa.array([result.db_version] * N_COMPONENTS, pa.int64()),
            "n": pa.array([b.n] * N_COMPONENTS, pa.int64()),
            "component": pa.array(k, pa.int32()),
            "mean": _vectors(np.tile(b.mean, (N_COMPONENTS, 1))),
            "vector": _vectors(b.components),
            "explained_variance": pa.array(b.explained_variance, pa.float64()),
            "explained_variance_ratio": pa.array(b.explained_variance_ratio, pa.float64()),
            "coefficient_min": pa.array(result.value_range.lo, pa.float32()),
            "coefficient_max": pa.array(result.value_range.hi, pa.float32()),
        }
    )


def histograms_table(result: ShiftResult) -> pa.Table:
    h, densities = result.histograms, result.densities()
    rows = [(g, k) for g in result.groups for k in range(N_COMPONENTS)]
    n = len(rows)
    return pa.table(
        {
            "axis": pa.array([result.axis] * n, pa.string()),
            "selection": pa.array([result.selection or ""] * n, pa.string()),
            "basis_selection": pa.array([result.basis_selection or ""] * n, pa.string()),
            "db_version": pa.array([result.db_version] * n, pa.int64()),
            "group": pa.array([g for g, _ in rows], pa.string()),
            "n": pa.array([int(h.counts[g][k].sum()) for g, k in rows], pa.int64()),
            "component": pa.array([k for _, k in rows], pa.int32()),
            "lo": pa.array([h.lo[k] for _, k in rows], pa.float64()),
            "hi": pa.array([h.hi[k] for _, k in rows], pa.float64()),
            "counts": pa.array([h.counts[g][k] for g, k in rows], pa.list_(pa.int64())),
            "density": pa.array([densities[g][0][k] for g, k in rows], pa.list_(pa.float64())),
            "bandwidth": pa.array([densities[g][1][k] for g, k in rows], pa.float64()),
        }
    )


def shifts_table(result: ShiftResult) -> pa.Table:
    pairs = [(a, b) for a in range(len(result.groups)) for b in range(a + 1, len(result.groups))]
    n = len(pairs)
    return pa.table(
        {
            "axis": pa.array([result.axis] * n, pa.string()),
            "selection": pa.array([result.selection or ""] * n, pa.string()),
            "basis_selection": pa.array([result.basis_selection or ""] * n, pa.string()),
            "db_version": pa.array([result.db_version] * n, pa.int64()),
            "group_a": pa.array([result.groups[a] for a, _ in pairs], pa.string()),
            "group_b": pa.array([result.groups[b] for _, b in pairs], pa.string()),
            "n_a": pa.array([int(result.sizes[a]) for a, _ in pairs], pa.int64()),
            "n_b": pa.array([int(result.sizes[b]) for _, b in pairs], pa.int64()),
            "kl": _vectors(np.array([result.kl[a, b] for a, b in pairs]).reshape(n, N_COMPONENTS), pa.float64()),
            "kl_weighted": pa.array([result.kl_weighted[a, b] for a, b in pairs], pa.float64()),
        }
    )


def write_analysis(db: str | os.PathLike, result: ShiftResult, write_basis: bool = True) -> Path:
    """DIR/analysis/{basis,histograms,shifts}.lance; rows of the same selection (and axis) are replaced,
    others kept."""
    folder = Path(db) / "analysis"
    folder.mkdir(exist_ok=True)
    selection = _sql_string(result.selection or "")
    if write_basis:
        _replace_rows(folder / "basis.lance", basis_table(result), f"selection = {selection}")
    key = f"axis = {_sql_string(result.axis)} AND selection = {selection}"
    _replace_rows(folder / "histograms.lance", histograms_table(result), key)
    _replace_rows(folder / "shifts.lance", shifts_table(result), key)
    return folder


# --- printing --------------------------------------------------------------------------------------


def print_shift_matrix(result: ShiftResult, console=None, max_groups: int = 24) -> None:
    """The explained-variance-weighted symmetric KL of every pair of groups as a rich table: rows
    name the groups (with their filter counts), columns refer to them by number."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    shown = min(len(result.groups), max_groups)
    version = f", DB version {result.db_version}" if result.db_version is not None else ""
    table = Table(title=f"Shift along {result.axis}: weighted symmetric KL ({result.histograms.bins} bins, {int(result.sizes.sum()):,} filters{version})", box=box.SIMPLE_HEAD)
    table.add_column("group", no_wrap=True)
    table.add_column("filters", justify="right", no_wrap=True)
    for i in range(shown):
        table.add_column(str(i + 1), justify="right", no_wrap=True)
    high = result.kl_weighted.max() if result.kl_weighted.size else 0
    for a in range(shown):
        values = result.kl_weighted[a, :shown]
        cells = ["" if a == b else f"{v:.3f}" if v >= 0.001 else f"{v:.0e}" for b, v in enumerate(values)]
        cells = [f"[bold]{c}[/bold]" if c and high > 0 and v >= 0.5 * high else c for c, v in zip(cells, values)]
        table.add_row(f"{a + 1}. {result.groups[a]}", f"{int(result.sizes[a]):,}", *cells)
    needed = max(len(f"{i + 1}. {g}") for i, g in enumerate(result.groups[:shown])) + 14 + 8 * shown
    wide = console if needed <= console.width else Console(file=console.file, width=needed)  # overflow, not truncate
    wide.print(table)
    if shown < len(result.groups):
        console.print(f"(first {shown} of {len(result.groups)} groups; every pair is in analysis/shifts.lance)")
    ratio = ", ".join(f"{r:.3f}" for r in result.basis.explained_variance_ratio)
    console.print(f"selection: {result.selection or 'all filters'}; basis over {result.basis_selection or 'all filters'} ({result.basis.n:,} filters), explained-variance ratios {ratio}")


def shifts_command(db: str | os.PathLike, by: str, console=None, **options) -> int:
    """`filterdb shifts`: run the analysis (`options` as for `run_shifts`), write the tables, print the
    matrix. Bad input raises ShiftInputError (a UsageError: the CLI prints it, exit status 2)."""
    from rich.console import Console

    console = console or Console()
    result = run_shifts(db, by, **options)
    print_shift_matrix(result, console)
    console.print(f"tables: {Path(db) / 'analysis'} (basis, histograms, shifts)")
    return 0
